"""Sharded archives (spec 14) against the single file, one process, no framework.

    python benchmarks/bench_archive.py [--mb 1024] [--shard-mb 256] [--repeats 3] [--out DIR]

Writes an Adam state of --mb MB of slots (8 weights, m and v) as one file and as an archive
of --shard-mb MB shards (fsync on, as by default), reads each back with checksums, and prints
the median seconds and GB/s of --repeats runs. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import optstate_format as osf


def state(mb):
    n = mb * 1024 * 1024 // 4 // 16
    rng = np.random.default_rng(0)
    weights = [osf.WeightEntry(f"layer_{i}/kernel", (n,), "float32", slots={
        "m": rng.standard_normal(n, np.float32), "v": rng.random(n, np.float32)})
        for i in range(8)]
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=1, weights=weights,
                              globals={"iterations": np.array(1, np.int64)})


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--shard-mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    st = state(args.mb)
    folder = Path(args.out or tempfile.mkdtemp(prefix="bench-archive-"))
    one, arc = folder / "one.optstate", folder / "arc.optstate"
    gb = args.mb / 1024
    rows = [
        ("write, one file", timed(lambda: osf.write(st, one), args.repeats)),
        ("write, archive", timed(lambda: osf.write(st, arc, max_shard_size=args.shard_mb << 20),
                                 args.repeats)),
        ("read, one file", timed(lambda: osf.read(one), args.repeats)),
        ("read, archive", timed(lambda: osf.read(arc), args.repeats)),
    ]
    shards = sum(1 for p in arc.iterdir() if p.name.startswith("shard-"))
    print(f"{args.mb} MB of slots; archive of {shards} shards of <= {args.shard_mb} MB; "
          f"median of {args.repeats}")
    for what, sec in rows:
        print(f"  {what:<18} {sec:7.3f} s  {gb / sec:6.2f} GB/s")
    for w0, w1 in zip(osf.read(one).weights, osf.read(arc).weights):
        assert np.array_equal(w0.slots["m"], w1.slots["m"])
    if not args.out:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
