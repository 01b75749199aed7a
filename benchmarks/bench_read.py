"""Time ``optstate_format.read`` on one large file (core only: no framework needed).

    python benchmarks/bench_read.py [--mb 200] [--repeats 7] [--out DIR]

Writes an Adam-like state of about ``--mb`` MB (float32 m and v for 1024x1024 weights),
then, warm page cache, times: read(verify=True), read(verify=False), and each followed by
touching every byte of every array (a sum), as an import that assigns them would. Prints the
median and min-max of ``--repeats`` runs and the process's peak RSS. Never run by the tests.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import optstate_format as osf


def make_state(mb):
    n = max(1, round(mb * 1e6 / (2 * 4 * 1024 * 1024)))
    rng = np.random.default_rng(0)
    weights = []
    for i in range(n):
        shape = (1024, 1024)
        weights.append(osf.WeightEntry(
            f"dense_{i}/kernel", shape, "float32",
            slots={"m": rng.standard_normal(shape, dtype=np.float32),
                   "v": rng.random(shape, dtype=np.float32)},
            hints={"structural": f"g:{i:032x}", "name": None}))
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=1, weights=weights,
                              globals={"iterations": np.array(1, np.int64)})


def touch(state):
    total = 0.0
    for w in state.weights:
        for arr in w.slots.values():
            total += float(arr.sum(dtype=np.float64))
    return total


def timed(fn, repeats):
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-read-"))
    path = osf.write(make_state(args.mb), folder / "bench.optstate", fsync=False)
    size = path.stat().st_size
    print(f"file {size / 1e6:.1f} MB; median (min - max) of {args.repeats}, warm page cache")
    cases = {
        "read(verify=True)": lambda: osf.read(path),
        "read(verify=False)": lambda: osf.read(path, verify=False),
        "read(verify=True) + touch every array": lambda: touch(osf.read(path)),
        "read(verify=False) + touch every array": lambda: touch(osf.read(path, verify=False)),
    }
    for name, fn in cases.items():
        med, lo, hi = timed(fn, args.repeats)
        print(f"{name:42s} {med:.3f} s ({lo:.3f} - {hi:.3f}); {size / 1e9 / med:.2f} GB/s")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if not args.out:
        path.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
