"""Mutation-strength tests of ``optstate check`` and the summary (optstate_format/_check.py):
the exact report (validity, code, tensor count, warnings) and the exact summary values."""

import math

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _check
from optstate_format._check import CheckReport, check, summarize

from crafting import edit_doc, globals_file, good_bytes, split, join
from helpers import adam_state


def test_a_valid_file_reports_every_tensor_and_no_warning(tmp_path):
    st = adam_state(n_weights=3, with_values=True)
    p = osf.write(st, tmp_path / "a.optstate", fsync=False)
    rep = check(p)
    # 1 global + 3 weights x (2 slots + 1 value)
    assert (rep.valid, rep.code, rep.message, rep.warnings, rep.tensors) == \
        (True, None, None, [], 10)
    assert rep.path == str(p)
    assert str(rep) == f"{p}: valid (10 tensors verified)"
    st = adam_state(n_weights=2)
    p = osf.write(st, tmp_path / "b.optstate", fsync=False)
    assert check(p).tensors == 5


def test_non_finite_values_are_counted_per_slot_and_value(tmp_path):
    st = adam_state(n_weights=2, with_values=True)
    st.weights[0].slots["m"][0, 0] = np.nan
    st.weights[0].slots["m"][1, 2] = np.inf
    st.weights[1].value[0, 1] = -np.inf
    st.globals["iterations"] = np.array(4, np.int64)
    p = osf.write(st, tmp_path / "n.optstate", fsync=False)
    rep = check(p)
    assert rep.valid and rep.tensors == 7
    assert rep.warnings == ["layer_0/kernel slot 'm': 2 NaN/Inf value(s)",
                            "layer_1/kernel value: 1 NaN/Inf value(s)"]
    assert str(rep).splitlines()[1:] == [f"  warning: {w}" for w in rep.warnings]


def test_a_large_non_finite_tensor_is_counted_too(tmp_path):
    # over the reader's small-tensor size: read alone, where finiteness is proven while read
    st = adam_state(n_weights=1)
    shape = (200, 200)
    st.weights[0].shape = shape
    st.weights[0].slots = {"m": np.ones(shape, np.float32), "v": np.ones(shape, np.float32)}
    st.weights[0].slots["v"][199, 199] = np.nan
    p = osf.write(st, tmp_path / "l.optstate", fsync=False)
    assert check(p).warnings == ["layer_0/kernel slot 'v': 1 NaN/Inf value(s)"]


def test_an_invalid_file_reports_the_code_and_message(tmp_path):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    data = bytes([data[0] ^ 1]) + data[1:]
    p = tmp_path / "bad.optstate"
    p.write_bytes(join(table, data))
    rep = check(p)
    assert (rep.valid, rep.code, rep.tensors, rep.warnings) == (False, "E_CHECKSUM", 0, [])
    assert "global:iterations" in rep.message
    assert str(rep) == f"{p}: INVALID E_CHECKSUM: {rep.message}"
    with pytest.raises(osf.IntegrityError) as e:
        osf.read(p)
    assert rep.message == e.value.msg


@pytest.mark.parametrize("version,warned", [("1.2", False), ("1.3", True), ("1.10", True)])
def test_a_newer_minor_version_is_a_warning(tmp_path, version, warned):
    raw = good_bytes(tmp_path)
    table, data = split(raw)
    table["__metadata__"]["optstate.version"] = version
    raw = edit_doc(join(table, data), lambda d: d.__setitem__("version", version))
    p = tmp_path / "v.optstate"
    p.write_bytes(raw)
    rep = check(p)
    assert rep.valid
    want = [f"file version {version} is newer than this reader (1.2); unknown fields ignored"]
    assert rep.warnings == (want if warned else [])


def test_the_report_string_of_an_invalid_file_with_warnings():
    rep = CheckReport("x", False, "E_X", "bad", ["w1", "w2"])
    assert str(rep) == "x: INVALID E_X: bad\n  warning: w1\n  warning: w2"
    assert CheckReport("y", True).warnings == [] and CheckReport("y", True).tensors == 0


def test_scalars_of_the_summary():
    s = _check._scalar
    assert s(np.array(True), "bool") is True and s(np.array(False), "bool") is False
    v = s(np.array(7, np.int64), "int64")
    assert v == 7 and type(v) is int
    v = s(np.array(2 ** 63 - 1, np.int64), "int64")
    assert v == 2 ** 63 - 1 and type(v) is int
    v = s(np.array(0.1, np.float32), "float32")
    assert type(v) is float and v == float(np.float32(0.1))
    # bfloat16 as a raw word: 0x3FC0 is 1.5, 0xC000 is -2.0
    assert s(np.array(0x3FC0, np.uint16), "bfloat16") == 1.5
    assert s(np.array(0xC000, np.uint16), "bfloat16") == -2.0
    assert s(np.array(0x7F80, np.uint16), "bfloat16") == math.inf


def test_non_finite_floats_become_strings_at_any_depth():
    f = _check._finite
    assert f(math.nan) == "NaN" and f(math.inf) == "Infinity" and f(-math.inf) == "-Infinity"
    assert f({"a": [1.5, (math.nan, {"b": -math.inf})], "c": "NaN", "d": 3, "e": None}) == \
        {"a": [1.5, ["NaN", {"b": "-Infinity"}]], "c": "NaN", "d": 3, "e": None}
    assert f(True) is True and f(2.0) == 2.0


def test_dtype_of_names_and_falls_back():
    assert _check.dtype_of(np.zeros(1, np.float16)) == "float16"
    assert _check.dtype_of(np.zeros(1, np.complex64)) == "complex64"


def test_summarize_a_state_exactly(tmp_path):
    st = adam_state(n_weights=1, with_values=True)
    st.globals["lr_scale"] = np.array(np.nan, np.float32)
    st.metadata = {"run": "r1"}
    got = summarize(osf.read(osf.write(st, tmp_path / "s.optstate", fsync=False)))
    w = st.weights[0]
    assert got == {
        "version": "1.2",
        "producer": got["producer"],
        "optimizer": {"algorithm": "adam", "class_name": "Adam",
                      "hyperparameters": {"beta_1": 0.9, "beta_2": 0.999},
                      "learning_rate": {"kind": "constant", "value": 0.001}, "wrappers": []},
        "step": 4,
        "globals": {"iterations": {"shape": [], "dtype": "int64", "value": 4},
                    "lr_scale": {"shape": [], "dtype": "float32", "value": "NaN"}},
        "weights": [{"path": w.path, "shape": [2, 3], "dtype": "float32", "trainable": True,
                     "slots": {"m": {"shape": [2, 3], "dtype": "float32"},
                               "v": {"shape": [2, 3], "dtype": "float32"}},
                     "has_value": True, "hints": w.hints}],
        "metadata": {"run": "r1"},
    }
    assert got["producer"]["library"] == "optstate-format"
    assert list(got["weights"][0]["slots"]) == ["m", "v"]
    # a non-scalar global has no value
    st.globals["vec"] = np.arange(3, dtype=np.int32)
    got = summarize(osf.read(osf.write(st, tmp_path / "t.optstate", fsync=False)))
    assert got["globals"]["vec"] == {"shape": [3], "dtype": "int32", "value": None}


def test_summarize_a_multi_optimizer_lists_components(tmp_path):
    st = adam_state(n_weights=2)
    st.optimizer.algorithm = "multi"
    st.optimizer.class_name = "Multi"
    st.optimizer.components = [{"algorithm": "adam", "class_name": "Adam"},
                               {"algorithm": "adam", "class_name": "Adam"}]
    st.weights[1].component = 1
    got = summarize(osf.read(osf.write(st, tmp_path / "m.optstate", fsync=False)))
    assert got["optimizer"]["components"] == st.optimizer.components
    assert [w["component"] for w in got["weights"]] == [0, 1]


def _bf16_state():
    import ml_dtypes
    st = adam_state(n_weights=1, with_values=True)
    w = st.weights[0]
    w.dtype = "bfloat16"
    w.slots = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.slots.items()}
    w.value = w.value.astype(ml_dtypes.bfloat16)
    return st


def test_slot_dtypes_in_the_summary_come_from_the_container(tmp_path, monkeypatch):
    """Where no bfloat16 type is installed the slots are read as raw 16-bit words; the summary
    still says bfloat16, because it takes each slot's dtype from the container by its key."""
    pytest.importorskip("ml_dtypes")
    p = osf.write(_bf16_state(), tmp_path / "bf.optstate", fsync=False)
    with_type = _check.summary(p)
    monkeypatch.setattr(osf._dtypes, "_bfloat16_type", lambda: None)
    st = osf.read(p)
    assert st.weights[0].slots["m"].dtype == np.uint16
    got = _check.summary(p)
    assert got == with_type
    assert got["weights"][0]["slots"] == {"m": {"shape": [2, 3], "dtype": "bfloat16"},
                                          "v": {"shape": [2, 3], "dtype": "bfloat16"}}


def test_summary_verifies_by_default_and_reports_progress(tmp_path):
    p = osf.write(adam_state(n_weights=2), tmp_path / "s.optstate", fsync=False)
    seen = []
    good = _check.summary(p, progress=seen.append)
    table, data = split(p.read_bytes())
    s = table["slot:layer_1/kernel:v"]["data_offsets"][0]
    assert sum(seen) == s + 36 - 0 and sum(seen) == sum(
        v["data_offsets"][1] - v["data_offsets"][0] for k, v in table.items()
        if k not in ("__metadata__", "optstate:header"))
    p.write_bytes(join(table, data[:s] + bytes([data[s] ^ 4]) + data[s + 1:]))
    with pytest.raises(osf.IntegrityError) as e:
        _check.summary(p)
    assert (e.value.code, e.value.key) == ("E_CHECKSUM", "slot:layer_1/kernel:v")
    assert _check.summary(p, verify=False).keys() == good.keys()


def test_a_foreign_exception_is_reported_not_raised(tmp_path, monkeypatch):
    p = osf.write(adam_state(n_weights=1), tmp_path / "f.optstate", fsync=False)

    def boom(*a, **k):
        raise RuntimeError("x" * 200)
    monkeypatch.setattr(_check, "read", boom)
    rep = check(p)
    assert (rep.path, rep.valid, rep.code, rep.tensors, rep.warnings) == \
        (str(p), False, "E_FORMAT", 0, [])
    assert rep.message == (f"unexpected RuntimeError while checking ({'x' * 120}); "
                           "this is a checker bug: please report it with the file.")


def test_a_refused_file_is_reported_with_its_path(tmp_path):
    p = tmp_path / "missing.optstate"
    rep = check(p)
    assert (rep.path, rep.valid, rep.code) == (str(p), False, "E_IO")
    assert rep.message == f"cannot open {str(p)!r}: No such file or directory."


def test_check_reports_progress_over_every_tensor_byte(tmp_path):
    p = osf.write(adam_state(n_weights=2, with_values=True), tmp_path / "p.optstate",
                  fsync=False)
    seen = []
    assert check(p, progress=seen.append).valid
    table, _ = split(p.read_bytes())
    assert sum(seen) == sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in
                            table.items() if k not in ("__metadata__", "optstate:header"))


def test_unsigned_scalars_are_not_taken_for_bfloat16_words():
    assert _check._scalar(np.array(7, np.uint16), "uint16") == 7
    assert _check._scalar(np.array(200, np.uint8), "uint8") == 200
    assert _check._scalar(np.array(2 ** 64 - 1, np.uint64), "uint64") == 2 ** 64 - 1


def test_global_dtypes_in_the_summary_come_from_the_container(tmp_path, monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    st = adam_state(n_weights=1)
    st.globals["scale"] = np.array(1.5, ml_dtypes.bfloat16)
    p = osf.write(st, tmp_path / "g.optstate", fsync=False)
    monkeypatch.setattr(osf._dtypes, "_bfloat16_type", lambda: None)
    got = _check.summary(p)
    assert got["globals"]["scale"] == {"shape": [], "dtype": "bfloat16", "value": 1.5}
