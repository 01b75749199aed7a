"""How long OptStateCheckpoint holds the training thread per checkpoint, sync vs async.

    python benchmarks/bench_checkpoint.py [--mb 200] [--saves 4] [--steps-between 8] [--rounds 2]

A stack of Dense layers holding --mb MB of Adam slots (m and v; the archive also holds the
weights, half that again) trains with ``fit`` and saves every --steps-between batches, once with
``async_write=False`` and once with ``True``, plus a run without the callback. Per checkpoint it
prints the time the training thread was blocked (the callback's own ``blocked_seconds``: the
whole export when sync; waiting for the previous write plus the snapshot when async), and the
whole fit's wall time against the run without checkpoints (modes interleaved over --rounds;
the load average is printed: on a shared machine the fit times are noisy, the blocked times
much less so). Anchor measured in the same run: a plain numpy copy of every variable (the
snapshot's floor). Never run by the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import keras  # noqa: E402

from optstate_format.converters.keras3 import OptStateCheckpoint  # noqa: E402


def build(mb):
    # Adam keeps 2 floats per parameter: mb MB of slots = mb * 2**20 / 8 parameters
    params = int(mb * 2**20 / 8)
    width = 2048
    layers = max(1, round(params / (width * width)))
    ipt = keras.Input((width,))
    x = ipt
    for _ in range(layers):
        x = keras.layers.Dense(width)(x)
    model = keras.Model(ipt, keras.layers.Dense(1)(x))
    model.compile(keras.optimizers.Adam(1e-4), "mse")
    return model, width


def run(mode, mb, saves, between, folder):
    keras.utils.set_random_seed(0)
    model, width = build(mb)
    steps = saves * between
    x = np.random.default_rng(0).standard_normal((steps * 4, width)).astype("float32")
    y = np.zeros((steps * 4, 1), "float32")
    model.fit(x[:8], y[:8], batch_size=4, epochs=1, verbose=0)  # build + trace outside timing
    cbs = []
    if mode != "none":
        cb = OptStateCheckpoint(folder, save_freq=between, keep=2,
                                async_write=(mode == "async"))
        cbs = [cb]
    start = time.perf_counter()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=cbs)
    wall = time.perf_counter() - start
    state_mb = sum(v.numpy().nbytes for v in model.optimizer.variables) / 2**20
    weights_mb = sum(v.numpy().nbytes for v in model.weights) / 2**20
    t = time.perf_counter()
    copies = [np.array(v.numpy()) for v in model.weights + model.optimizer.variables]
    floor = time.perf_counter() - t
    del copies
    return wall, (cbs[0].blocked_seconds if cbs else []), state_mb, weights_mb, floor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--steps-between", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    base = a.out or tempfile.mkdtemp(prefix="bench-ckpt-", dir=".")
    try:
        results = {m: [] for m in ("none", "sync", "async")}
        load0 = os.getloadavg()
        for _ in range(a.rounds):
            for mode in results:
                folder = os.path.join(base, mode)
                results[mode].append(run(mode, a.mb, a.saves, a.steps_between, folder))
                shutil.rmtree(folder, ignore_errors=True)
        _, _, state_mb, weights_mb, _ = results["none"][0]
        floor = statistics.median(r[4] for rs in results.values() for r in rs)
        wall0 = statistics.median(r[0] for r in results["none"])
        print(f"Adam state {state_mb:.0f} MB + weights {weights_mb:.0f} MB per archive; "
              f"{a.saves} checkpoints, one every {a.steps_between} steps, {a.rounds} rounds; "
              f"keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs, "
              f"load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
        print(f"floor: numpy copy of every variable, median {floor * 1e3:.0f} ms")
        print(f"fit without checkpoints: median {wall0:.2f} s")
        for mode in ("sync", "async"):
            blocked = [b for r in results[mode] for b in r[1]]
            wall = statistics.median(r[0] for r in results[mode])
            print(f"{mode:5s}: blocked per checkpoint median {statistics.median(blocked) * 1e3:.0f}"
                  f" ms, max {max(blocked) * 1e3:.0f} ms (n={len(blocked)}); fit median "
                  f"{wall:.2f} s ({wall - wall0:+.2f} s against no checkpoints)")
    finally:
        if a.out is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
