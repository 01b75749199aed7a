"""Export/import speed and memory against the raw I/O floor and Keras's own tools.

    python benchmarks/bench_io.py [--sizes 50,200,1000] [--repeats 3] [--out DIR]

For each optimizer-state size (MB of Adam slots on a stack of Dense layers) it measures, in one
process and one run: the raw floor (copy the slot variables out + safetensors.numpy.save_file;
safetensors.numpy.load_file + assign), optstate export and import, Keras's `.keras`
save/load_weights and tf.train.Checkpoint write/read. Medians of --repeats runs, each figure also
as a ratio to the floor, and peak private (anonymous) resident memory above the pre-operation
baseline, sampled every 2 ms (pages of a memory-mapped file are page cache, not counted). Then matching time for functional models of 500, 1,000 and 5,000 layers.
Never run by the test suite; figures go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import optstate_format as osf  # noqa: E402
from optstate_format._identity import Graph, Layer, Node, weight_identities  # noqa: E402
from optstate_format.converters import keras3 as conv  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    """Private (anonymous) resident memory: mapped file pages are page cache, not copies."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Peak RSS above the value at entry, sampled in a thread."""

    def __enter__(self):
        self.base = rss()
        self.peak = self.base
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, rss())
        self.extra = self.peak - self.base


def dense_stack(n_layers, width, trained=True):
    ipt = keras.Input((width,))
    x = ipt
    for _ in range(n_layers):
        x = keras.layers.Dense(width)(x)
    model = keras.Model(ipt, x)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.optimizer.build(model.trainable_variables)
    if trained:  # non-trivial slot contents, as after training
        rng = np.random.default_rng(0)
        for v in model.optimizer.variables:
            if len(v.shape) >= 1:
                v.assign(rng.standard_normal(v.shape).astype("float32"))
    return model


def slot_vars(model):
    return [v for v in model.optimizer.variables]


def run_interleaved(ops, repeats):
    """Each op once to warm up (not counted), then ``repeats`` rounds of every op in turn.

    Interleaving spreads the machine's drift (page cache, other tenants) over all the
    operations instead of charging it to whichever ran during a slow spell; an
    untimed ``sync`` before each keeps one operation's pending disk writes from
    being paid by the next.
    """
    for name, fn, setup in ops:
        if setup:
            setup()
        fn()
    times = {name: [] for name, _, _ in ops}
    mems = {name: [] for name, _, _ in ops}
    for _ in range(repeats):
        for name, fn, setup in ops:
            if setup:
                setup()
            gc.collect()
            os.sync()  # the previous operation's dirty pages are not this one's to write
            with Peak() as p:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            mems[name].append(p.extra)
    return {name: (statistics.median(times[name]), min(times[name]), max(times[name]),
                   max(mems[name])) for name, _, _ in ops}


def bench_size(mb, repeats, folder):
    width = 1024 if mb <= 400 else 2048
    per_layer = 2 * (width * width + width) * 4
    n_layers = max(1, round(mb * 1e6 / per_layer))
    model = dense_stack(n_layers, width)
    target = dense_stack(n_layers, width)
    fresh = {}
    state_bytes = sum(int(np.prod(v.shape)) * 4 for v in slot_vars(model) if len(v.shape))
    d = Path(folder)

    def floor_export():
        arrays = {}
        for i, v in enumerate(slot_vars(model)):
            a = v.numpy()
            arrays[str(i)] = a.reshape(1) if a.ndim == 0 else a  # save_file refuses 0-d
        save_file(arrays, str(d / "floor.safetensors"))

    def floor_import():
        arrays = load_file(str(d / "floor.safetensors"))
        for i, v in enumerate(slot_vars(target)):
            a = arrays[str(i)]
            v.assign(a.reshape(()) if len(v.shape) == 0 else a)

    def new_fresh():
        fresh.clear()
        gc.collect()
        fresh["m"] = dense_stack(n_layers, width, trained=False)

    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    ckpt_t = tf.train.Checkpoint(model=target, optimizer=target.optimizer)
    ops = [
        ("floor export", floor_export, None),
        ("optstate export", lambda: osf.export_state(model, d / "s.optstate"), None),
        ("optstate export, fsync=False",
         lambda: osf.export_state(model, d / "s2.optstate", fsync=False), None),
        (".keras save", lambda: model.save(d / "m.keras"), None),
        ("tf.train.Checkpoint write", lambda: ckpt.write(str(d / "ckpt")), None),
        ("floor import", floor_import, None),
        ("optstate import", lambda: osf.import_state(target, d / "s.optstate"), None),
        ("optstate import, rollback=False",
         lambda: osf.import_state(target, d / "s.optstate", rollback=False), None),
        ("optstate import into a fresh model",
         lambda: osf.import_state(fresh["m"], d / "s.optstate"), new_fresh),
        (".keras load_weights", lambda: target.load_weights(d / "m.keras"), None),
        ("tf.train.Checkpoint read", lambda: ckpt_t.read(str(d / "ckpt")), None),
    ]
    rows = run_interleaved(ops, repeats)
    # What the rollback journal keeps (exact, not sampled): whole buffers for variables
    # whose elements differ, one element for constant ones.
    new_fresh()
    for name, m in (("journal, trained target", target), ("journal, fresh target", fresh["m"])):
        entries = [conv._ADAPTER.journal_entry(v) for v in slot_vars(m)]
        rows[name] = sum(int(np.asarray(value).nbytes) for _, value, _ in entries)
        del entries
    fresh.clear()
    largest = max(int(np.prod(v.shape)) * 4 for v in slot_vars(model))
    for f in d.iterdir():
        if f.is_file():
            f.unlink()
        else:
            shutil.rmtree(f)
    return n_layers, width, state_bytes, largest, rows


def residual_graph(n_layers):
    """A deep residual stack with a two-branch block every 10 layers, as the core sees it."""
    layers, nodes = {}, []
    x = ("input", 0)
    for i in range(n_layers):
        layers[f"d{i}"] = Layer("Dense", [("kernel", f"d{i}.k"), ("bias", f"d{i}.b")])
        nodes.append(Node(f"d{i}", [x]))
        y = ("node", len(nodes) - 1, 0)
        layers[f"act{i}"] = Layer("Activation")
        nodes.append(Node(f"act{i}", [y]))
        y = ("node", len(nodes) - 1, 0)
        layers[f"add{i}"] = Layer("Add")
        nodes.append(Node(f"add{i}", [x, y]))
        x = ("node", len(nodes) - 1, 0)
    return Graph(layers, nodes, [x])


def keras_residual(n_blocks):
    ipt = keras.Input((8,))
    x = ipt
    for _ in range(n_blocks):
        y = keras.layers.Dense(8)(x)
        y = keras.layers.Activation("relu")(y)
        x = keras.layers.Add()([x, y])
    model = keras.Model(ipt, x)
    model.compile("adam", "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def bench_matching(sizes):
    out = []
    for n in sizes:
        gc.collect()
        g = residual_graph(n)
        t0 = time.perf_counter()
        weight_identities(g)
        core = time.perf_counter() - t0
        model = keras_residual(n // 3)  # Dense + Activation + Add per block: n layers in all
        other = keras_residual(n // 3)
        state = conv.extract_state(model, materialize=True)
        gc.collect()
        t0 = time.perf_counter()
        target = conv._ADAPTER.describe_target(other, other.optimizer)
        osf.plan_import(state, target)
        full = time.perf_counter() - t0
        out.append((n, core, len(model.layers), full))

    return out


def main():
    import sys
    sys.setrecursionlimit(100_000)  # Keras's own model construction recurses per layer
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--match-sizes", default="500,1000,5000")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.0f} GiB; {platform.platform()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, tensorflow "
          f"{tf.__version__}, keras {keras.__version__}, optstate-format {osf.__version__}")
    for mb in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=".") as folder:
            n, w, sb, largest, rows = bench_size(mb, args.repeats, folder)
        print(f"\n### Adam state {sb / 1e6:.0f} MB ({n} x Dense({w}); largest tensor "
              f"{largest / 1e6:.1f} MB), median of {args.repeats}")
        print("| operation | seconds (median) | min - max | x floor | "
              "peak extra private RSS (MB) |")
        print("| --- | --- | --- | --- | --- |")
        journal = {k: rows.pop(k) for k in list(rows) if k.startswith("journal")}
        for name, (t, lo, hi, mem) in rows.items():
            floor = rows["floor export" if any(k in name for k in (
                "export", "save", "write")) else "floor import"][0]
            print(f"| {name} | {t:.3f} | {lo:.3f} - {hi:.3f} | {t / floor:.2f} | "
                  f"{mem / 1e6:.0f} |")
        ours = {k: rows[f"optstate {k}"][0] for k in ("export", "import")}
        print(f"\nexport: {rows['.keras save'][0] / ours['export']:.2f}x faster than .keras "
              f"save, {rows['tf.train.Checkpoint write'][0] / ours['export']:.2f}x faster than "
              f"Checkpoint write; import: {rows['.keras load_weights'][0] / ours['import']:.2f}x "
              f"faster than .keras load_weights, "
              f"{rows['tf.train.Checkpoint read'][0] / ours['import']:.2f}x faster than "
              "Checkpoint read")
        print("rollback journal holds: " + "; ".join(
            f"{k.split(', ')[1]} {v / 1e6:.3f} MB" for k, v in journal.items()))
    print("\n### Matching (structural identity + plan), deep residual stacks")
    print("| layers | core identity only (s) | Keras layers | describe + match, Keras (s) |")
    print("| --- | --- | --- | --- |")
    for n, core, kl, full in bench_matching([int(s) for s in args.match_sizes.split(",")]):
        print(f"| {n} | {core:.3f} | {kl} | {full:.3f} |")


if __name__ == "__main__":
    main()
