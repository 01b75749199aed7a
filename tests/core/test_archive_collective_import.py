"""An import made by every process of a job (spec 14.11), without a framework: threads stand
in for the processes, a dict adapter for the framework. Each process reads only the regions
its adapter's ``local_boxes`` names (whole tensors otherwise), and the processes agree
before the first assignment and after the last: a failure in any process leaves every
process as it was."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import optstate_format as osf
from crafting import damage_piece
from fake_processes import Arr, Handle, Shard, run_processes
from optstate_format import _api, _archive, _io
from optstate_format._identity import Graph
from optstate_format.adapter import (BaseAdapter, ModelDescription, ModelWeight,
                                     OptimizerDescription, Regions, Variable, WeightSlots,
                                     box_of)

KERNEL_M = np.arange(4 * 8, dtype=np.float32).reshape(4, 8)
KERNEL_V = KERNEL_M * 10 + 0.5
BIAS_M = np.arange(8, dtype=np.float32) - 3
BIAS_V = BIAS_M * 2
ALL_BYTES = 2 * KERNEL_M.nbytes + 2 * BIAS_M.nbytes + 8  # + the int64 iterations


def _cols(p):
    return (slice(None), slice(4 * p, 4 * p + 4))


def _named(path):
    return {"structural": None, "name": path}


def _file_state(kernel_m=KERNEL_M):
    """The same state as one process holds it whole (for single-file exports)."""
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=2, weights=[
        osf.WeightEntry("dense/kernel", (4, 8), "float32", hints=_named("dense/kernel"),
                        slots={"m": kernel_m, "v": KERNEL_V}),
        osf.WeightEntry("dense/bias", (8,), "float32", hints=_named("dense/bias"),
                        slots={"m": BIAS_M, "v": BIAS_V})],
        globals={"iterations": np.array(2, np.int64)})


def _written_state(p):
    """What process ``p`` of 2 exports: the kernel's slots split by columns (its half), the
    bias's replicated, the step a host value."""
    def split(full):
        return _archive.Sourced((4, 8), "float32", None, Handle(Arr(
            [Shard(_cols(p), 0, full[_cols(p)]), Shard(_cols(1 - p), 1, full[_cols(1 - p)])])))

    def replicated(full):
        return _archive.Sourced((8,), "float32", None, Handle(Arr(
            [Shard((slice(None),), p * 2, full), Shard((slice(None),), p * 2 + 1, full)])))
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=2, weights=[
        osf.WeightEntry("dense/kernel", (4, 8), "float32", hints=_named("dense/kernel"),
                        slots={"m": split(KERNEL_M), "v": split(KERNEL_V)}),
        osf.WeightEntry("dense/bias", (8,), "float32", hints=_named("dense/bias"),
                        slots={"m": replicated(BIAS_M), "v": replicated(BIAS_V)})],
        globals={"iterations": np.array(2, np.int64)})


@pytest.fixture
def pieces_archive(tmp_path):
    """An archive in which each kernel slot is stored as two pieces, one per writer."""
    path = tmp_path / "run.optstate"
    out = run_processes(2, lambda p, procs: _archive.write_distributed(
        _written_state(p), path, max_shard_size=64, fsync=False, procs=procs))
    assert out == [path, path]
    assert set(osf.read_header(path)["archive"]["pieces"]) == {"slot:dense/kernel:m",
                                                               "slot:dense/kernel:v"}
    return path


class SplitAdapter(BaseAdapter):
    """Process ``p``'s view of a Dense(8) layer whose kernel (and its slots) is split by
    columns over 2 processes: it holds columns 4p..4p+4. ``fail``: the assignment (1-based)
    that raises."""

    framework = "dict"

    def __init__(self, p, fail=None, boxes=True):
        self.p, self.fail, self.calls = p, fail, 0
        self.split = set()
        weights, slots = [], []
        for name, shape in (("kernel", (4, 8)), ("bias", (8,))):
            var = Variable(("value", name), shape, "float32")
            weights.append(ModelWeight(f"dense/{name}", var, True, named=True))
            slots.append(WeightSlots(var.handle, {
                s: Variable((s, name), shape, "float32") for s in ("m", "v")}))
            if name == "kernel":
                self.split |= {var.handle} | {v.handle for v in slots[-1].slots.values()}
        self.desc = ModelDescription(weights, Graph({}, [], []))
        self.opt = OptimizerDescription(osf.OptimizerInfo("adam", "Adam"), 0, slots,
                                        {"iterations": Variable("iterations", (), "int64")})
        # the local part of each variable: split ones hold (4, 4)
        self.values = {v.handle: np.zeros((4, 4) if v.handle in self.split else v.shape,
                                          np.float32)
                       for v in [w.variable for w in weights]
                       + [v for ws in slots for v in ws.slots.values()]}
        self.values["iterations"] = np.array(0, np.int64)
        self.got = {}
        if not boxes:
            self.local_boxes = lambda handle: None

    def describe_model(self, model):
        return self.desc

    def describe_optimizer(self, model, optimizer, *, create):
        return self.opt

    def local_boxes(self, handle):
        return [box_of(_cols(self.p), (4, 8))] if handle in self.split else None

    def read(self, handle):
        return self.values[handle]

    def assign(self, handle, value):
        self.calls += 1
        if self.calls == self.fail:
            raise RuntimeError("device lost")
        if isinstance(value, Regions):
            self.got[handle] = value
            value = value.box(_cols(self.p))
        elif handle in self.split:  # a whole array for a split variable: keep the local part
            value = np.asarray(value)[_cols(self.p)]
        self.values[handle] = np.array(value)


class Model:
    def __init__(self, adapter):
        self.adapter = adapter


def _import_everywhere(monkeypatch, path, adapters, paths=None, **kw):
    """``import_state`` in 2 fake processes; returns what each returned or raised."""
    local = threading.local()
    monkeypatch.setattr(_api, "adapter_for", lambda model: model.adapter)
    monkeypatch.setattr(_api, "processes", lambda: local.procs)

    def body(p, procs):
        procs.collective_import = True
        local.procs = procs
        return osf.import_state(Model(adapters[p]), (paths or [path, path])[p],
                                include_weights=False, **kw)
    return run_processes(2, body)


def _snapshot(adapters):
    return [{k: np.array(v) for k, v in ad.values.items()} for ad in adapters]


def _assert_unchanged(adapters, before):
    for ad, old in zip(adapters, before):
        assert set(ad.values) == set(old)
        for k, v in old.items():
            np.testing.assert_array_equal(ad.values[k], v, err_msg=str(k))


def test_each_process_reads_only_its_regions_and_assigns_them(monkeypatch, pieces_archive):
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    reports = _import_everywhere(monkeypatch, pieces_archive, adapters)
    for p, (ad, rep) in enumerate(zip(adapters, reports)):
        assert isinstance(rep, osf.ImportReport), rep
        assert rep.ok and rep.assigned == 5
        np.testing.assert_array_equal(ad.values[("m", "kernel")], KERNEL_M[_cols(p)])
        np.testing.assert_array_equal(ad.values[("v", "kernel")], KERNEL_V[_cols(p)])
        np.testing.assert_array_equal(ad.values[("m", "bias")], BIAS_M)
        np.testing.assert_array_equal(ad.values[("v", "bias")], BIAS_V)
        assert int(ad.values["iterations"]) == 2
        # the split slots came as regions holding this process's half and nothing else
        for s, full in (("m", KERNEL_M), ("v", KERNEL_V)):
            regions = ad.got[(s, "kernel")]
            assert list(regions.boxes) == [((0, 4 * p), (4, 4 * p + 4))]
            assert regions.shape == (4, 8) and regions.dtype == "float32"
            np.testing.assert_array_equal(regions.box(_cols(p)), full[_cols(p)])
            with pytest.raises(KeyError):
                regions.box(_cols(1 - p))
        # its half of each kernel slot, both bias slots whole, the step: not the other half
        assert rep.bytes_read == ALL_BYTES - KERNEL_M.nbytes


def test_without_local_boxes_a_process_reads_and_assigns_whole_tensors(monkeypatch,
                                                                       pieces_archive):
    adapters = [SplitAdapter(0, boxes=False), SplitAdapter(1, boxes=False)]
    reports = _import_everywhere(monkeypatch, pieces_archive, adapters)
    for p, (ad, rep) in enumerate(zip(adapters, reports)):
        assert rep.ok and rep.bytes_read == ALL_BYTES
        assert ad.got == {}
        np.testing.assert_array_equal(ad.values[("v", "kernel")], KERNEL_V[_cols(p)])


def test_a_single_file_is_read_whole_and_cut_into_regions(monkeypatch, tmp_path):
    path = tmp_path / "one.optstate"
    osf.write(_file_state(), path)
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    reports = _import_everywhere(monkeypatch, path, adapters)
    for p, (ad, rep) in enumerate(zip(adapters, reports)):
        assert rep.ok and rep.bytes_read == ALL_BYTES  # a file stores its tensors whole
        np.testing.assert_array_equal(ad.got[("v", "kernel")].box(_cols(p)), KERNEL_V[_cols(p)])
        np.testing.assert_array_equal(ad.values[("m", "kernel")], KERNEL_M[_cols(p)])


def test_a_piece_damaged_for_one_process_fails_every_process_before_any_assignment(
        monkeypatch, pieces_archive):
    damage_piece(pieces_archive, "slot:dense/kernel:v", [0, 4])  # process 1's half only
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    before = _snapshot(adapters)
    errors = _import_everywhere(monkeypatch, pieces_archive, adapters)
    assert all(isinstance(e, osf.IntegrityError) for e in errors), errors
    assert errors[1].code == errors[0].code == "E_CHECKSUM"
    assert "process 1 of 2 failed" in str(errors[0]) and "no process assigned" in str(errors[0])
    assert "slot:dense/kernel:v" in str(errors[1])
    assert errors[0].key == errors[1].key
    assert adapters[0].calls == adapters[1].calls == 0
    _assert_unchanged(adapters, before)


def test_an_assignment_failing_in_one_process_rolls_back_every_process(monkeypatch,
                                                                       pieces_archive):
    adapters = [SplitAdapter(0, fail=4), SplitAdapter(1)]
    before = _snapshot(adapters)
    errors = _import_everywhere(monkeypatch, pieces_archive, adapters)
    assert all(isinstance(e, osf.OptStateError) for e in errors), errors
    assert errors[0].code == errors[1].code == "E_ASSIGN"
    assert "device lost" in str(errors[0])
    assert "process 0 of 2 failed" in str(errors[1]) and "restores" in str(errors[1])
    assert adapters[1].calls > 5  # process 1 assigned everything, then restored it
    _assert_unchanged(adapters, before)


def test_processes_that_opened_different_exports_assign_nothing(monkeypatch, pieces_archive,
                                                                tmp_path):
    other = tmp_path / "other.optstate"
    out = run_processes(2, lambda p, procs: _archive.write_distributed(
        _written_state(p), other, max_shard_size=64, fsync=False, procs=procs))
    assert out == [other, other]
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    before = _snapshot(adapters)
    errors = _import_everywhere(monkeypatch, None, adapters, paths=[pieces_archive, other])
    assert all(isinstance(e, osf.FormatError) and e.code == "E_ARCHIVE_MISMATCH"
               for e in errors), errors
    assert "different exports" in str(errors[0])
    _assert_unchanged(adapters, before)


def test_a_refused_plan_is_refused_in_every_process(monkeypatch, pieces_archive):
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    for ad in adapters:  # the target keeps a slot the file lacks
        ad.opt.slots[1].slots["extra"] = Variable(("extra", "bias"), (8,), "float32")
        ad.values[("extra", "bias")] = np.zeros(8, np.float32)
    before = _snapshot(adapters)
    errors = _import_everywhere(monkeypatch, pieces_archive, adapters)
    assert all(isinstance(e, osf.MatchError) for e in errors), errors
    assert "E_MATCH_SLOTS" in str(errors[0])
    _assert_unchanged(adapters, before)


def test_nan_in_a_region_is_noted_for_the_process_that_read_it(monkeypatch, tmp_path):
    path = tmp_path / "nan.optstate"
    m = KERNEL_M.copy()
    m[0, 5] = np.nan  # in process 1's half only
    osf.write(_file_state(m), path)
    reports = _import_everywhere(monkeypatch, path, [SplitAdapter(0), SplitAdapter(1)])
    assert not [n for n in reports[0].notes if "NaN" in n]
    assert [n for n in reports[1].notes if "NaN" in n] == [
        "dense/kernel slot 'm': 1 NaN/Inf value(s) in this process's regions, imported as "
        "they are"]


def test_lazy_reads_only_the_pieces_a_region_touches(pieces_archive):
    with _io.Lazy(pieces_archive) as lazy:
        st = lazy.state()
        m = st.weight("dense/kernel").slots["m"]
        assert isinstance(m, _io.Stored) and m.shape == (4, 8) and m.dtype == "float32"
        assert lazy.bytes_read == 0
        # a region across both pieces is assembled from both
        got = lazy.read({m.key: [((1, 2), (3, 6))]})[m.key]
        np.testing.assert_array_equal(got.box((slice(1, 3), slice(2, 6))), KERNEL_M[1:3, 2:6])
        assert lazy.bytes_read == KERNEL_M.nbytes
        # a region inside one piece reads that piece alone
        got = lazy.read({m.key: [((0, 5), (4, 7))]})[m.key]
        np.testing.assert_array_equal(got.box((slice(None), slice(5, 7))), KERNEL_M[:, 5:7])
        assert lazy.bytes_read == KERNEL_M.nbytes * 3 // 2
        # asking for it whole assembles it
        np.testing.assert_array_equal(np.asarray(m), KERNEL_M)


def test_regions_name_boxes_by_start_and_stop():
    assert box_of((slice(None), slice(4, 8)), (3, 8)) == ((0, 4), (3, 8))
    assert box_of((slice(1, None),), (5, 2)) == ((1, 0), (5, 2))  # missing axes: whole
    with pytest.raises(ValueError):
        box_of((slice(0, 4, 2),), (4,))
    r = Regions((4,), "float32", {((0,), (2,)): np.array([1, 2], np.float32)})
    with pytest.raises(TypeError):
        np.asarray(r)
    assert r.box((slice(1, 2),)).tolist() == [2.0]


# ---- any tiling, any boxes: a box read equals the whole tensor's region ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _tilings(draw):
    """A (rows, cols) tensor, cut into a grid of pieces, and 1-3 boxes to read."""
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 7))

    def cuts(n):
        inner = draw(st.sets(st.integers(1, n - 1), max_size=3)) if n > 1 else set()
        return [0, *sorted(inner), n]
    rcut, ccut = cuts(rows), cuts(cols)

    def box():
        r0 = draw(st.integers(0, rows - 1))
        c0 = draw(st.integers(0, cols - 1))
        return ((r0, c0), (draw(st.integers(r0 + 1, rows)), draw(st.integers(c0 + 1, cols))))
    return rows, cols, rcut, ccut, [box() for _ in range(draw(st.integers(1, 3)))]


@settings(max_examples=40, deadline=None)
@given(_tilings())
def test_any_box_of_any_tiling_reads_as_the_whole_tensors_region(case):
    import tempfile
    rows, cols, rcut, ccut, boxes = case
    full = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) * 1.5 - 7
    grid = [((a, c), (b, d)) for a, b in zip(rcut, rcut[1:]) for c, d in zip(ccut, ccut[1:])]
    shards = [Shard((slice(a, b), slice(c, d)), 0, full[a:b, c:d]) for (a, c), (b, d) in grid]
    state = osf.OptimizerState(osf.OptimizerInfo("sgd", "SGD"), step=1, weights=[
        osf.WeightEntry("w", (rows, cols), "float64", hints=_named("w"), slots={
            "momentum": _archive.Sourced((rows, cols), "float64", None,
                                         Handle(Arr(shards)))})])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.optstate"
        out = run_processes(1, lambda p, procs: _archive.write_distributed(
            state, path, max_shard_size=40, fsync=False, procs=procs))
        assert out == [path]
        with _io.Lazy(path) as lazy:
            key = lazy.state().weight("w").slots["momentum"].key
            got = lazy.read({key: boxes})[key]
            for (r0, c0), (r1, c1) in boxes:
                np.testing.assert_array_equal(got.box((slice(r0, r1), slice(c0, c1))),
                                              full[r0:r1, c0:c1])
            def shared(box, piece):  # elements a box and a piece have in common
                return np.prod([max(0, min(t, y) - max(s, x)) for s, t, x, y in
                                zip(box[0], box[1], piece[0], piece[1])])
            met = [g for g in grid if any(shared(b, g) for b in boxes)]
            assert lazy.bytes_read == sum(8 * (b - a) * (d - c) for (a, c), (b, d) in met)
