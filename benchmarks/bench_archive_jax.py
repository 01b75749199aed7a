"""One archive written by 1 and by 2 JAX processes, read back by 1 and by 2 (issue 15).

    python benchmarks/bench_archive_jax.py [--layers 8] [--width 4096] [--shard-mb 256]

A Keras 3 model of --layers Dense(--width) layers (zeros), Adam built (m and v: 2 x 4 x
layers x width^2 bytes; the defaults make 1 GiB), kernels laid out P(None, 'model') over a
(batch 2, model 2) mesh of 4 CPU devices: 1 process x 4 devices, then 2 processes x 2 devices
(jax.distributed on localhost, the 'model' axis across the processes, so each writes half of
every kernel's slots). Prints each export's seconds (slowest process), then osf.read of the
archive by 1 process and by 2 processes at once, then import_state into the same layout by
1 process x 4 devices and by 2 processes x 2 devices (each reading only the pieces its
devices hold, spec 14.11), with the bytes each process read. Never run by the test suite.
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


def worker(pid, nprocs, port, archive, layers, width, shard_mb, what="export"):
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // nprocs}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    if nprocs > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=nprocs, process_id=pid,
                                   initialization_timeout=120)
    import keras
    import numpy as np
    from keras import distribution as kd

    import optstate_format as osf
    devices = kd.list_devices()
    grid = np.array(devices).reshape(2, 2).T.reshape(-1).tolist() if nprocs > 1 else devices
    layouts = kd.LayoutMap(kd.DeviceMesh((2, 2), ["batch", "model"], devices=grid))
    layouts[".*kernel"] = (None, "model")
    kd.set_distribution(kd.ModelParallel(layout_map=layouts, batch_dim_name="batch"))
    x = inp = keras.Input((width,))
    for i in range(layers):
        x = keras.layers.Dense(width, name=f"d{i}", kernel_initializer="zeros")(x)
    model = keras.Model(inp, x)
    opt = keras.optimizers.Adam()
    opt.build(model.trainable_variables)
    model.compile(optimizer=opt, loss="mse")
    t = time.perf_counter()
    if what == "import":
        report = osf.import_state(model, archive)
        assert report.ok, report
        print(json.dumps({"import": time.perf_counter() - t, "bytes": report.bytes_read}),
              flush=True)
        return
    osf.export_state(model, archive, max_shard_size=shard_mb << 20)
    print(json.dumps({"export": time.perf_counter() - t}), flush=True)


def spawn(args_of, n, timeout=900):
    return _spawn.spawn(__file__, args_of, n, timeout)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--shard-mb", type=int, default=256)
    args = ap.parse_args()
    import optstate_format as osf
    folder = Path(tempfile.mkdtemp(prefix="bench-archive-jax-"))
    archive = folder / "run.optstate"
    mb = 2 * 4 * args.layers * args.width ** 2 / 2 ** 20
    print(f"Adam state {mb:.0f} MiB ({args.layers} x Dense({args.width})), shards <= "
          f"{args.shard_mb} MiB")
    try:
        for n in (1, 2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = str(s.getsockname()[1])
            shutil.rmtree(archive, ignore_errors=True)
            res = spawn(lambda p: ["--worker", str(p), str(n), port, str(archive),
                                   str(args.layers), str(args.width), str(args.shard_mb)], n)
            files = sorted(p.name for p in archive.iterdir() if p.name.startswith("shard-"))
            pieces = "pieces" in osf.read_header(archive)["archive"]
            print(f"  export by {n} process(es): {max(r['export'] for r in res):6.2f} s "
                  f"({len(files)} shards{', kernels as pieces' if pieces else ''})")
            for r in (1, 2):
                res = spawn(lambda p: ["--read", str(archive)], r)
                print(f"    read by {r} process(es) at once: "
                      f"{max(x['read'] for x in res):6.2f} s each")
            for r in (1, 2):  # import_state into the same layout, by 1 x 4 and 2 x 2
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = str(s.getsockname()[1])
                res = spawn(lambda p: ["--worker", str(p), str(r), port, str(archive),
                                       str(args.layers), str(args.width), str(args.shard_mb),
                                       "import"], r)
                read = [x["bytes"] for x in res]
                said = ("whole file" if read[0] is None else
                        ", ".join(f"{b / 2 ** 20:.0f}" for b in read) + " MiB read")
                print(f"    import_state by {r} process(es) x {4 // r} devices: "
                      f"{max(x['import'] for x in res):6.2f} s ({said})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        a = sys.argv[2:]
        worker(int(a[0]), int(a[1]), a[2], a[3], int(a[4]), int(a[5]), int(a[6]), *a[7:])
    elif sys.argv[1:2] == ["--read"]:
        import optstate_format as osf
        t = time.perf_counter()
        osf.read(sys.argv[2])
        print(json.dumps({"read": time.perf_counter() - t}), flush=True)
    else:
        main()
