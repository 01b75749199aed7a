"""Worker for test_archive.py: export one state as a sharded archive in a loop until killed.

usage: archive_writer.py PATH STEP [loops]
"""

import sys

import numpy as np

import optstate_format as osf

SHARD = 1024 * 1024


def state(step, n=6, size=256 * 1024):
    rng = np.random.default_rng(step)
    weights = [osf.WeightEntry(f"layer_{i}/kernel", (size,), "float32", slots={
        "m": rng.standard_normal(size).astype(np.float32),
        "v": np.full(size, float(step), np.float32)}) for i in range(n)]
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=step, weights=weights,
                              globals={"iterations": np.array(step, np.int64)})


if __name__ == "__main__":
    path, step = sys.argv[1], int(sys.argv[2])
    loops = int(sys.argv[3]) if len(sys.argv) > 3 else 10 ** 9
    st = state(step)
    print("ready", flush=True)
    for _ in range(loops):
        osf.write(st, path, max_shard_size=SHARD)
