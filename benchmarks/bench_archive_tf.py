"""One archive written by 1 process and by the 2 workers of a tf.distribute
MultiWorkerMirroredStrategy job, read back by 1 and by 2 processes (issue 15, tf.distribute).

    python benchmarks/bench_archive_tf.py [--layers 8] [--width 4096] [--shard-mb 256]

A Keras 3 model (TensorFlow backend, CPU) of --layers Dense(--width) layers (zeros), Adam
built (m and v: 2 x 4 x layers x width^2 bytes; the defaults make 1 GiB): first one process
without a strategy, then 2 workers on localhost (TF_CONFIG), model and optimizer built in
strategy.scope(). Every variable is mirrored, so worker 0 writes the whole archive and
worker 1 only takes part in the exchanges (spec 14.10): the 2-worker time is the 1-process
time plus the exchanges. Prints each export's seconds (slowest worker), then osf.read of the
archive by 1 process and by 2 processes at once. Never run by the test suite.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _spawn  # noqa: E402


def worker(index, ports, archive, layers, width, shard_mb):
    if ports:
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
            "task": {"type": "worker", "index": index}})
    os.environ.update(KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
                      TF_CPP_MIN_LOG_LEVEL="3")
    import contextlib

    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if ports else None
    import keras

    import optstate_format as osf
    with strategy.scope() if strategy else contextlib.nullcontext():
        x = inp = keras.Input((width,))
        for i in range(layers):
            x = keras.layers.Dense(width, name=f"d{i}", kernel_initializer="zeros")(x)
        model = keras.Model(inp, x)
        opt = keras.optimizers.Adam()
        opt.build(model.trainable_variables)
        model.compile(optimizer=opt, loss="mse")
    t = time.perf_counter()
    osf.export_state(model, archive, max_shard_size=shard_mb << 20)
    print(json.dumps({"export": time.perf_counter() - t}), flush=True)


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [str(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ",".join(ports)


def spawn(args_of, n, timeout=1800):
    return _spawn.spawn(__file__, args_of, n, timeout)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--shard-mb", type=int, default=256)
    args = ap.parse_args()
    import optstate_format as osf
    folder = Path(tempfile.mkdtemp(prefix="bench-archive-tf-"))
    archive = folder / "run.optstate"
    mb = 2 * 4 * args.layers * args.width ** 2 / 2 ** 20
    print(f"Adam state {mb:.0f} MiB ({args.layers} x Dense({args.width})), shards <= "
          f"{args.shard_mb} MiB")
    try:
        for n in (1, 2):
            ports = _ports(n) if n > 1 else ""
            shutil.rmtree(archive, ignore_errors=True)
            res = spawn(lambda p: ["--worker", str(p), ports, str(archive), str(args.layers),
                                   str(args.width), str(args.shard_mb)], n)
            files = sorted(p.name for p in archive.iterdir() if p.name.startswith("shard-"))
            assert osf.read_header(archive)["archive"]["files"]
            print(f"  export by {n} process(es): {max(r['export'] for r in res):6.2f} s "
                  f"({len(files)} shards)")
            for r in (1, 2):
                res = spawn(lambda p: ["--read", str(archive)], r)
                print(f"    read by {r} process(es) at once: "
                      f"{max(x['read'] for x in res):6.2f} s each")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        a = sys.argv[2:]
        worker(int(a[0]), a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
    elif sys.argv[1:2] == ["--read"]:
        import optstate_format as osf
        t = time.perf_counter()
        osf.read(sys.argv[2])
        print(json.dumps({"read": time.perf_counter() - t}), flush=True)
    else:
        main()
