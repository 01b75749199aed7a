"""Worker for test_reliability.py: export states to one path in a loop until killed.

usage: crash_writer.py PATH STEP [loops]
"""

import sys

import numpy as np

import optstate_format as osf


def state(step, mb=48):
    n = mb * 1024 * 1024 // 4 // 4
    rng = np.random.default_rng(step)
    weights = [osf.WeightEntry(f"layer_{i}/kernel", (n,), "float32", slots={
        "m": rng.standard_normal(n).astype(np.float32),
        "v": np.full(n, float(step), np.float32)}) for i in range(2)]
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=step, weights=weights,
                              globals={"iterations": np.array(step, np.int64)})


if __name__ == "__main__":
    path, step = sys.argv[1], int(sys.argv[2])
    loops = int(sys.argv[3]) if len(sys.argv) > 3 else 10 ** 9
    st = state(step)
    print("ready", flush=True)
    for _ in range(loops):
        osf.write(st, path)
