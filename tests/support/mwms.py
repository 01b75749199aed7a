"""Shared by the tf.distribute tests (tests/keras3 and tests/tf_keras test_archive_mwms.py):
run a MultiWorkerMirroredStrategy job of 2 workers on localhost (mwms_worker.py), bounded in
time and never left behind, and the checks both Keras generations share."""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

import optstate_format as osf

WORKER = Path(__file__).resolve().parent / "mwms_worker.py"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 150


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_job(flavor, folder: Path, n=2):
    """Run the ``n`` workers; returns (archive, outdir, [output of each worker])."""
    archive, outdir = folder / "run.optstate", folder / "out"
    outdir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("TF_CONFIG", "KERAS_BACKEND", "TF_USE_LEGACY_KERAS"):
        env.pop(k, None)
    ports = ",".join(map(str, free_ports(n)))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), ports, flavor,
                               str(archive), str(outdir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for i in range(n)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # TensorFlow handles SIGTERM itself: SIGKILL, and reap
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"worker {i}:\n" + out[-4000:]
    return archive, outdir, outs


def shard_keys(archive: Path):
    """{shard file: [tensor keys]} read from each shard's own container header."""
    out = {}
    for name in sorted(os.listdir(archive)):
        if not name.startswith("shard-"):
            continue
        with open(archive / name, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            table = json.loads(f.read(n))
        out[name] = [k for k in table if k not in ("__metadata__", "optstate:header")]
    return out


def check_each_tensor_once(archive: Path):
    """Every tensor stored once, whole, by worker 0 (mirrored: replicated everywhere)."""
    doc = osf.read_header(archive)
    assert "pieces" not in doc["archive"]
    keys = shard_keys(archive)
    assert keys and all("-p00000-" in name for name in keys), sorted(keys)
    flat = [k for ks in keys.values() for k in ks]
    assert len(flat) == len(set(flat)), "a tensor is stored twice"
    assert set(flat) == set(doc["archive"]["shards"]) == set(doc["checksums"])
    assert osf.check(archive).valid
    return len(flat)


def worker_values(outdir: Path):
    w0, w1 = (dict(np.load(outdir / f"worker{i}.npz")) for i in (0, 1))
    assert set(w0) == set(w1)
    for k in w0:  # mirrored state: the same on both workers, bit for bit
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    return w0


def check_state(archive: Path, want: dict, path_of):
    """The archive read by one process holds ``want`` (keys ``name|what``) bit for bit."""
    st = osf.read(archive)
    n = 0
    for w in st.weights:
        for what, arr in [("value", w.value), *w.slots.items()]:
            key = f"{path_of(w.path)}|{what}"
            assert key in want, key
            np.testing.assert_array_equal(np.asarray(arr), want[key], err_msg=key)
            n += 1
    assert int(st.globals["iterations"]) == int(want["iterations"]) == st.step
    assert n == len(want) - 1, (n, len(want))
    return n


def check_failures_kept_the_archive(archive: Path, outdir: Path, outs, want, path_of):
    """Both injected failures failed both workers with E_WRITE; the archive of the first
    export is unchanged (same index bytes, same files: nothing left behind) and reads."""
    for i, out in enumerate(outs):
        for who in (1, 0):
            line = [ln for ln in out.splitlines()
                    if ln.startswith(f"worker {i} failure of worker {who}:")]
            assert line and "StorageError E_WRITE" in line[0], out[-3000:]
            assert f"process {who}: OSError" in line[0] and "injected" in line[0], line[0]
    first = json.loads((outdir / "after_first.json").read_text())
    assert sorted(os.listdir(archive)) == first["listing"]
    digest = hashlib.sha256((archive / "optstate-index.safetensors").read_bytes()).hexdigest()
    assert digest == first["index_sha256"]
    check_state(archive, want, path_of)
