"""Export/import speed and memory against the physical I/O floor (issue 16).

    python benchmarks/bench_io.py [--framework keras|torch] [--sizes 50,200,1000]
                                  [--repeats 5] [--profile MB]

For each optimizer-state size (MB of Adam slots on a stack of dense layers) it measures, in one
process and one run:

- the **physical floor**: the same tensor bytes, already copied out of the framework into
  numpy buffers before the clock starts, written with ``os.write`` (no checksum, no fsync,
  no rename); and read with ``preadv`` into buffers allocated (and touched) before the
  clock starts, by as many threads as our reader uses. Nothing can move the bytes with
  less work: every figure is also given as a ratio to it. Two more references: reading into buffers numpy allocates inside the timing
  (the C library often hands back memory it just freed, already resident), and reading into
  **new memory**: anonymous mappings made inside the timing, never recycled, with huge pages
  advised as our reader's arrays are. An import that keeps the previous state until it has
  succeeded (the rollback journal) or that must not write into buffers the framework still
  uses has to put the bytes into memory other than the old state's, so its honest floor is
  the second one; the first touch of that memory alone is a row of its own. On the project
  machine (a Firecracker VM whose balloon reports freed pages to the host) memory freed more
  than about 2 s earlier costs a host fault on its next touch: ~350 ms per 200 MB with huge
  pages, against ~30 ms when it was freed just before. ``--settle`` (default 3 s) idles
  before every operation, so each meets memory as a user's import does;
- ours: ``export_state`` with and without fsync, ``import_state`` (checksums verified,
  rollback journal on) into a trained model, with ``rollback=False``, and into a freshly
  built model;
- anchors, labelled as such: the old floor (copy out + ``safetensors.numpy.save_file``;
  ``load_file`` + assign), Keras's ``.keras`` save/load_weights and ``tf.train.Checkpoint``
  (Keras), ``torch.save``/``torch.load`` + ``load_state_dict`` (torch).

Medians of --repeats rounds; operations interleaved round by round (the machine's drift is
spread over all of them), each preceded by an untimed ``sync``. Memory: the peak of private
(anonymous) resident memory above the value before the operation, sampled every 2 ms.
``--profile MB`` prints where export and import spend their time (cProfile, cumulative).
Never run by the test suite; figures go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import mmap
import os
import platform
import pstats
import shutil
import statistics
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

import optstate_format as osf  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    """Private (anonymous) resident memory."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Peak RSS above the value at entry, sampled in a thread."""

    def __enter__(self):
        self.base = self.peak = rss()
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
        self.extra = max(self.peak, rss()) - self.base


def physical_write(arrays, path):
    """The floor of an export: the bytes, already in numpy, to the file with os.write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for a in arrays:
            view = memoryview(a.reshape(-1).view(np.uint8))
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def physical_read(buffers, path):
    """The floor of an import: the bytes into preallocated buffers with ``preadv``, by as
    many threads as our reader uses (faulting and copying go side by side), no checksum."""
    offsets, pos = [], 0
    for b in buffers:
        offsets.append(pos)
        pos += b.nbytes
    fd = os.open(path, os.O_RDONLY)
    try:
        def one(job):
            b, off = job
            view, done = memoryview(b.reshape(-1).view(np.uint8)), 0
            while done < len(view):
                done += os.preadv(fd, [view[done:]], off + done)
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(one, zip(buffers, offsets)))
    finally:
        os.close(fd)


_HUGE = 2 * 1024 * 1024


def new_memory(nbytes):
    """``nbytes`` of memory no allocator recycled: an anonymous mapping, huge pages advised
    from 2 MiB (as numpy and our reader do). Unmapped when the returned array is dropped."""
    m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(m, np.uint8, nbytes)


def physical_read_new(sizes, path):
    """The floor of an import that must not overwrite the old state: preadv into new memory."""
    physical_read([new_memory(n) for n in sizes], path)


def first_touch(sizes):
    """What new memory alone costs: one byte written per 4 KiB page of each mapping, all
    mappings held to the end (as an import holds the arrays it reads)."""
    held = [new_memory(n) for n in sizes]
    for a in held:
        a[::4096] = 1


# ---- frameworks --------------------------------------------------------------------------

class Case:
    """A stack of dense layers holding ``mb`` MB of Adam state: a source and a target."""

    def __init__(self, mb):
        self.width = 1024 if mb <= 400 else 2048
        per_layer = 2 * (self.width ** 2 + self.width) * 4
        self.n_layers = max(1, round(mb * 1e6 / per_layer))
        self.model = self.build(trained=True)
        self.target = self.build(trained=True)


class KerasCase(Case):
    name = "Keras 3 (TensorFlow backend)"

    def __init__(self, mb):
        import keras
        import tensorflow as tf
        self.keras, self.tf = keras, tf
        super().__init__(mb)

    def versions(self):
        return f"tensorflow {self.tf.__version__}, keras {self.keras.__version__}"

    def build(self, trained=True):
        keras = self.keras
        ipt = keras.Input((self.width,))
        x = ipt
        for _ in range(self.n_layers):
            x = keras.layers.Dense(self.width)(x)
        model = keras.Model(ipt, x)
        model.compile(keras.optimizers.Adam(1e-3), "mse")
        model.optimizer.build(model.trainable_variables)
        if trained:  # non-trivial slot contents, as after training
            rng = np.random.default_rng(0)
            for v in model.optimizer.variables:
                if len(v.shape) >= 1:
                    v.assign(rng.standard_normal(v.shape).astype("float32"))
        return model

    def state_vars(self, model):
        return list(model.optimizer.variables)

    def arrays(self, model):
        return [np.array(v.numpy()) for v in self.state_vars(model)]

    def assign_all(self, model, arrays):
        for v, a in zip(self.state_vars(model), arrays):
            v.assign(a.reshape(v.shape))

    def anchors(self, d):
        tf = self.tf
        ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        ckpt_t = tf.train.Checkpoint(model=self.target, optimizer=self.target.optimizer)
        return [
            ("anchor: .keras save", lambda: self.model.save(d / "m.keras"), "export"),
            ("anchor: tf.train.Checkpoint write", lambda: ckpt.write(str(d / "ckpt")),
             "export"),
            ("anchor: .keras load_weights", lambda: self.target.load_weights(d / "m.keras"),
             "import"),
            ("anchor: tf.train.Checkpoint read", lambda: ckpt_t.read(str(d / "ckpt")),
             "import"),
        ]


class TorchCase(Case):
    name = "PyTorch (torch.optim.Adam)"

    def __init__(self, mb):
        import torch
        self.torch = torch
        super().__init__(mb)

    def versions(self):
        return f"torch {self.torch.__version__}"

    def build(self, trained=True):
        torch = self.torch
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(self.width, self.width)
                                      for _ in range(self.n_layers)])
        model.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if trained:
            x = torch.randn(4, self.width)
            model(x).square().mean().backward()
            model.optimizer.step()
            model.optimizer.zero_grad()
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for st in model.optimizer.state.values():
                    for k in ("exp_avg", "exp_avg_sq"):
                        st[k].copy_(torch.randn(st[k].shape, generator=g))
        return model

    def export(self, model, path, **kw):
        return osf.export_state(model, path, optimizer=model.optimizer, **kw)

    def state_vars(self, model):
        out = []
        for p in model.parameters():
            st = model.optimizer.state[p]
            out += [st["step"], st["exp_avg"], st["exp_avg_sq"]]
        return out

    def arrays(self, model):
        return [t.detach().numpy().copy() for t in self.state_vars(model)]

    def assign_all(self, model, arrays):
        torch = self.torch
        with torch.no_grad():
            for t, a in zip(self.state_vars(model), arrays):
                t.copy_(torch.from_numpy(a.reshape(t.shape)))

    def anchors(self, d):
        torch = self.torch

        def load():
            sd = torch.load(d / "opt.pt", weights_only=True)
            self.target.optimizer.load_state_dict(sd)

        return [
            ("anchor: torch.save(optimizer.state_dict())",
             lambda: torch.save(self.model.optimizer.state_dict(), d / "opt.pt"), "export"),
            ("anchor: torch.load + load_state_dict", load, "import"),
        ]


CASES = {"keras": KerasCase, "torch": TorchCase}


def run_interleaved(ops, repeats, settle=0.0):
    for _, fn, setup, _ in ops:  # warm-up, not counted
        if setup:
            setup()
        fn()
    times = {name: [] for name, *_ in ops}
    mems = {name: [] for name, *_ in ops}
    for _ in range(repeats):
        for name, fn, setup, _ in ops:
            if setup:
                setup()
            gc.collect()
            os.sync()
            time.sleep(settle)  # every operation meets memory in the same state (--settle)
            with Peak() as p:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            mems[name].append(p.extra)
    return {name: (statistics.median(times[name]), min(times[name]), max(times[name]),
                   max(mems[name]), kind) for name, _, _, kind in ops}


def operations(case, d, anchors=True):
    model, target = case.model, case.target
    kw = {"optimizer": model.optimizer} if isinstance(case, TorchCase) else {}
    tkw = {"optimizer": target.optimizer} if isinstance(case, TorchCase) else {}
    out_arrays = case.arrays(model)          # outside the framework before the clock starts
    in_buffers = [np.empty_like(a) for a in out_arrays]
    sizes = [a.nbytes for a in out_arrays]
    fresh = {}

    def new_fresh():
        fresh.clear()
        gc.collect()
        fresh["m"] = case.build(trained=False)

    def fresh_import():
        m = fresh["m"]
        return osf.import_state(m, d / "s.optstate",
                                **({"optimizer": m.optimizer} if tkw else {}))

    def old_floor_export():
        arrays = {str(i): (a.reshape(1) if a.ndim == 0 else a)
                  for i, a in enumerate(case.arrays(model))}
        save_file(arrays, str(d / "floor.safetensors"))

    def old_floor_import():
        arrays = load_file(str(d / "floor.safetensors"))
        case.assign_all(target, [arrays[str(i)] for i in range(len(arrays))])

    ops = [
        ("physical floor: os.write", lambda: physical_write(out_arrays, d / "phys.bin"),
         None, "export"),
        ("optstate export", lambda: osf.export_state(model, d / "s.optstate", **kw), None,
         "export"),
        ("optstate export, fsync=False",
         lambda: osf.export_state(model, d / "s2.optstate", fsync=False, **kw), None, "export"),
        ("anchor: old floor (copy out + save_file)", old_floor_export, None, "export"),
        ("physical floor: preadv into resident buffers",
         lambda: physical_read(in_buffers, d / "phys.bin"), None,
         "import"),
        ("reference: preadv into buffers numpy allocates (often recycled memory)",
         lambda: physical_read([np.empty_like(b) for b in in_buffers], d / "phys.bin"), None,
         "import"),
        ("floor into new memory: preadv into fresh anonymous mappings",
         lambda: physical_read_new(sizes, d / "phys.bin"), None, "import"),
        ("reference: first touch of new memory of the state's size (no read)",
         lambda: first_touch(sizes), None, "import"),
        ("optstate import", lambda: osf.import_state(target, d / "s.optstate", **tkw), None,
         "import"),
        ("optstate import, rollback=False",
         lambda: osf.import_state(target, d / "s.optstate", rollback=False, **tkw), None,
         "import"),
        ("optstate import into a fresh model", fresh_import, new_fresh, "import"),
        ("anchor: old floor (load_file + assign)", old_floor_import, None, "import"),
    ]
    if not anchors:  # Keras's and torch's own savers churn memory between our rounds
        return [op for op in ops if not op[0].startswith("anchor")]
    ops += [(name, fn, None, kind) for name, fn, kind in case.anchors(d)]
    return ops


def bench_size(framework, mb, repeats, folder, anchors=True, settle=0.0):
    case = CASES[framework](mb)
    d = Path(folder)
    rows = run_interleaved(operations(case, d, anchors), repeats, settle)
    state_bytes = sum(a.nbytes for a in case.arrays(case.model))
    largest = max(a.nbytes for a in case.arrays(case.model))
    for f in d.iterdir():
        (f.unlink if f.is_file() else lambda: shutil.rmtree(f))()
    return case, state_bytes, largest, rows


def profile(framework, mb, folder, top=25):
    case = CASES[framework](mb)
    d = Path(folder)
    kw = {"optimizer": case.model.optimizer} if framework == "torch" else {}
    tkw = {"optimizer": case.target.optimizer} if framework == "torch" else {}
    for what, fn in (("export, fsync=False",
                      lambda: osf.export_state(case.model, d / "p.optstate", fsync=False, **kw)),
                     ("import", lambda: osf.import_state(case.target, d / "p.optstate", **tkw))):
        fn()
        pr = cProfile.Profile()
        gc.collect()
        pr.enable()
        fn()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
        print(f"\n### profile: {framework} {what}, {mb} MB (sorted by own time)\n")
        print("```")
        print("\n".join(line for line in s.getvalue().splitlines()[4:] if line.strip()))
        print("```")


def residual_graph(n_layers):
    """A deep residual stack (Dense, Activation, Add per block), as the core sees it."""
    from optstate_format._identity import Graph, Layer, Node
    layers, nodes = {}, []
    x = ("input", 0)
    for i in range(n_layers // 3):
        layers[f"d{i}"] = Layer("Dense", [("kernel", f"d{i}.k"), ("bias", f"d{i}.b")])
        nodes.append(Node(f"d{i}", [x]))
        layers[f"act{i}"] = Layer("Activation")
        nodes.append(Node(f"act{i}", [("node", len(nodes) - 1, 0)]))
        layers[f"add{i}"] = Layer("Add")
        nodes.append(Node(f"add{i}", [x, ("node", len(nodes) - 1, 0)]))
        x = ("node", len(nodes) - 1, 0)
    return Graph(layers, nodes, [x])


def bench_matching(sizes):
    """Core identity alone; describe + match + plan of a Keras target (what matching costs);
    and a whole Keras transfer (also describing the source and assigning every variable)
    between two deep residual stacks whose weights are tiny."""
    import keras
    from optstate_format import _api
    from optstate_format._identity import describe_identities
    from optstate_format._match import plan_import

    def model(n_layers):
        ipt = keras.Input((8,))
        x = ipt
        for _ in range(n_layers // 3):
            y = keras.layers.Dense(8)(x)
            y = keras.layers.Activation("relu")(y)
            x = keras.layers.Add()([x, y])
        m = keras.Model(ipt, x)
        m.compile(keras.optimizers.Adam(), "mse")
        m.optimizer.build(m.trainable_variables)
        return m
    out = []
    for n in sizes:
        g = residual_graph(n)
        gc.collect()
        t0 = time.perf_counter()
        describe_identities(g)
        core = time.perf_counter() - t0
        a, b = model(n), model(n)
        state = _api.source_state(a, materialize=True)
        gc.collect()
        t0 = time.perf_counter()  # describe the target, identities, match and plan: no assign
        adapter = _api.adapter_for(b)
        desc, opt = _api._describe(adapter, b, None, create=True)
        ids = _api.identities(desc)
        target = _api.build_state(desc, opt, wrap=lambda v: v, include_weights=False,
                                  all_weights=True, ids=ids)
        _, assignments = plan_import(state, target, identities=ids)
        plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        osf.transfer_state(a, b)
        full = time.perf_counter() - t0
        out.append((n, core, len(a.layers), len(assignments), plan, full))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=sorted(CASES), default="keras")
    ap.add_argument("--sizes", default="50,200,1000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", type=int, default=0, metavar="MB")
    ap.add_argument("--settle", type=float, default=3.0, metavar="SECONDS",
                    help="idle time before every timed operation (default 3): on a VM whose "
                    "balloon reports freed memory to the host, memory freed this long ago costs "
                    "a host fault again, as it does for a user's import")
    ap.add_argument("--no-anchors", action="store_true",
                    help="only the floors and ours (the anchors' memory churn slows imports)")
    ap.add_argument("--match-sizes", default="500,1000,5000",
                    help="layers of the matching benchmark (Keras); empty to skip")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * PAGE / 2**30:.0f} GiB; {platform.platform()}; "
          f"load {os.getloadavg()[0]:.1f}")
    if args.profile:
        with tempfile.TemporaryDirectory(dir=".") as folder:
            profile(args.framework, args.profile, folder)
        return
    for mb in [int(s) for s in args.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory(dir=".") as folder:
            case, sb, largest, rows = bench_size(args.framework, mb, args.repeats, folder,
                                                 not args.no_anchors, args.settle)
        print(f"\n### {case.name}: Adam state {sb / 1e6:.0f} MB ({case.n_layers} x "
              f"{case.width}x{case.width}; largest tensor {largest / 1e6:.1f} MB), median of "
              f"{args.repeats}; python {platform.python_version()}, numpy {np.__version__}, "
              f"{case.versions()}, optstate-format {osf.__version__}; {args.settle:g} s idle "
              f"before each operation; load "
              f"{os.getloadavg()[0]:.1f}\n")
        print("| operation | seconds (median) | min - max | x physical floor | "
              "x floor into new memory | peak extra private RSS (MB) |")
        print("| --- | --- | --- | --- | --- | --- |")
        floors = {"export": rows["physical floor: os.write"][0],
                  "import": rows["physical floor: preadv into resident buffers"][0]}
        new_floor = rows["floor into new memory: preadv into fresh anonymous mappings"][0]
        for name, (t, lo, hi, mem, kind) in rows.items():
            second = f"{t / new_floor:.2f}" if kind == "import" else ""
            print(f"| {name} | {t:.3f} | {lo:.3f} - {hi:.3f} | {t / floors[kind]:.2f} | "
                  f"{second} | {mem / 1e6:.0f} |")
    if args.match_sizes and args.framework == "keras":
        import sys
        sys.setrecursionlimit(100_000)  # Keras's own model construction recurses per layer
        print("\n### Matching: structural identity and a whole transfer, deep residual stacks\n")
        print("| layers | core identity only (s) | Keras layers | variables | describe + match "
              "+ plan (s) | whole transfer_state (s) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n, core, kl, nv, plan, full in bench_matching(
                [int(x) for x in args.match_sizes.split(",")]):
            print(f"| {n} | {core:.3f} | {kl} | {nv} | {plan:.3f} | {full:.3f} |")


if __name__ == "__main__":
    main()
