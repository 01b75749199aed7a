"""Write/read round trips, determinism, atomicity and safetensors interoperability."""

import hashlib
import os

import numpy as np
import pytest
from safetensors import safe_open

import optstate_format as osf
from optstate_format import LazyTensor, OptimizerInfo, OptimizerState, WeightEntry
from optstate_format import _dtypes

from helpers import adam_state


def test_roundtrip_preserves_every_slot_value_and_global(tmp_path):
    st = adam_state(with_values=True)
    back = osf.read(osf.write(st, tmp_path / "s.optstate"))
    assert back.step == 4 and back.optimizer.algorithm == "adam"
    assert back.globals["iterations"].item() == 4
    for w in st.weights:
        b = back.weight(w.path)
        assert b.hints == w.hints and b.shape == w.shape
        for k in w.slots:
            np.testing.assert_array_equal(b.slots[k], w.slots[k])
        np.testing.assert_array_equal(b.value, w.value)


@pytest.mark.parametrize("dtype", [d for d in _dtypes.DTYPES if d != "bfloat16"])
def test_every_dtype_in_the_table_roundtrips_bitwise(tmp_path, dtype):
    arr = (np.arange(-3, 3) % 2 == 0) if dtype == "bool" else np.arange(6).astype(dtype)
    st = OptimizerState(OptimizerInfo("generic:X", "X"), weights=[WeightEntry(
        "w", (6,), dtype, slots={"s": arr.reshape(6)})])
    back = osf.read(osf.write(st, tmp_path / "d.optstate"))
    got = back.weight("w").slots["s"]
    assert got.dtype == arr.dtype and got.tobytes() == arr.tobytes()


def test_nan_and_inf_roundtrip_exactly_and_check_warns(tmp_path):
    vals = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5], np.float32)
    st = OptimizerState(OptimizerInfo("sgd", "SGD"), weights=[WeightEntry(
        "w", (5,), "float32", slots={"momentum": vals})])
    p = osf.write(st, tmp_path / "n.optstate")
    got = osf.read(p).weight("w").slots["momentum"]
    assert got.tobytes() == vals.tobytes()
    rep = osf.check(p)
    assert rep.valid and any("3 NaN/Inf" in w for w in rep.warnings)


def test_scalar_and_empty_tensors_roundtrip(tmp_path):
    st = OptimizerState(OptimizerInfo("adafactor", "Adafactor"), weights=[WeightEntry(
        "b", (0,), "float32", slots={"r": np.array(0, np.int32), "c": np.array(0, np.int32),
                                     "v": np.zeros((0,), np.float32)})],
        globals={"iterations": np.array(9, np.int64)})
    back = osf.read(osf.write(st, tmp_path / "e.optstate"))
    assert back.weight("b").slots["v"].shape == (0,)
    assert back.weight("b").slots["r"].shape == () and back.globals["iterations"] == 9


def test_same_state_gives_same_bytes_whatever_dict_order(tmp_path):
    a = adam_state()
    b = adam_state()
    b.weights.reverse()
    for w in b.weights:
        w.slots = dict(reversed(list(w.slots.items())))
    b.optimizer.hyperparameters = dict(reversed(list(a.optimizer.hyperparameters.items())))
    pa = osf.write(a, tmp_path / "a.optstate")
    pb = osf.write(b, tmp_path / "b.optstate")
    assert pa.read_bytes() == pb.read_bytes()


def test_golden_bytes_of_the_minimal_vector_are_stable():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "spec", "conformance", "valid",
                        "minimal_sgd.optstate")
    state = osf.read(path)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        again = osf.write(state, os.path.join(d, "again.optstate"))
        assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(
            open(path, "rb").read()).hexdigest()


def test_any_safetensors_reader_lists_tensors_and_format_metadata(tmp_path):
    st = adam_state(with_values=True)
    p = osf.write(st, tmp_path / "s.optstate")
    with safe_open(str(p), framework="numpy") as f:
        keys = set(f.keys())
        meta = f.metadata()
        assert meta["optstate.format"] == "optstate" and meta["optstate.version"] == osf.FORMAT_VERSION
        assert "slot:layer_0/kernel:m" in keys and "weight:layer_1/kernel" in keys
        np.testing.assert_array_equal(f.get_tensor("slot:layer_2/kernel:v"),
                                      st.weights[2].slots["v"])
        assert f.get_tensor("global:iterations").item() == 4


def test_tensor_offsets_are_aligned_to_their_itemsize(tmp_path):
    st = OptimizerState(OptimizerInfo("generic:X", "X"), weights=[
        WeightEntry("a", (3,), "int8", slots={"s": np.ones(3, np.int8)}),
        WeightEntry("b", (3,), "float64", slots={"s": np.ones(3, np.float64)}),
        WeightEntry("c", (1,), "float16", slots={"s": np.ones(1, np.float16)})])
    p = osf.write(st, tmp_path / "al.optstate")
    back = osf.read(p)
    for w in back.weights:
        arr = w.slots["s"]
        assert arr.ctypes.data % arr.dtype.itemsize == 0


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.optstate"
    osf.write(adam_state(seed=1), target)
    before = target.read_bytes()

    def boom():
        raise RuntimeError("device lost")

    st = adam_state(seed=2)
    st.weights[1].slots["m"] = LazyTensor((3, 3), "float32", boom)
    with pytest.raises(RuntimeError):
        osf.write(st, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["keep.optstate"]


def test_lazy_tensors_are_fetched_once_each_in_file_order(tmp_path):
    fetched = []
    st = adam_state()
    for w in st.weights:
        for k, arr in list(w.slots.items()):
            w.slots[k] = LazyTensor(arr.shape, "float32",
                                    lambda arr=arr, k=(w.path, k): fetched.append(k) or arr)
    osf.write(st, tmp_path / "lazy.optstate")
    assert len(fetched) == len(set(fetched)) == 6


def test_writer_refuses_slot_shape_that_breaks_the_registry_rule(tmp_path):
    st = adam_state()
    st.weights[0].slots["m"] = np.zeros((9,), np.float32)
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "bad.optstate")
    assert e.value.code == "E_SLOT_SHAPE" and e.value.path == "layer_0/kernel"
    assert not (tmp_path / "bad.optstate").exists()


def test_writer_refuses_duplicate_paths_and_bad_paths(tmp_path):
    st = adam_state()
    st.weights[1].path = st.weights[0].path
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "dup.optstate")
    assert e.value.code == "E_DUPLICATE_PATH"
    st = adam_state()
    st.weights[0].path = "dense/kernel:0"
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "p.optstate")
    assert e.value.code == "E_PATH"


def test_hyperparameters_must_be_data(tmp_path):
    st = adam_state()
    st.optimizer.hyperparameters["fn"] = object()
    with pytest.raises(osf.FormatError) as e:
        osf.write(st, tmp_path / "h.optstate")
    assert e.value.code == "E_SCHEMA"


def test_errors_subclass_matching_builtins():
    assert issubclass(osf.FormatError, ValueError)
    assert issubclass(osf.VersionError, osf.FormatError)
    assert issubclass(osf.IntegrityError, ValueError)
    assert issubclass(osf.MatchError, ValueError)
    for cls in (osf.FormatError, osf.IntegrityError, osf.MatchError, osf.VersionError):
        assert issubclass(cls, osf.OptStateError)


@pytest.mark.parametrize("durable", [True, False])
def test_fsync_waits_for_the_disk_only_when_asked_and_the_file_is_the_same(tmp_path,
                                                                            monkeypatch, durable):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    state = adam_state()
    p = osf.write(state, tmp_path / f"s{durable}.optstate", fsync=durable)
    assert len(synced) == (2 if durable else 0)  # the file, then its folder's entry
    monkeypatch.undo()
    q = osf.write(state, tmp_path / "ref.optstate")
    assert p.read_bytes() == q.read_bytes()
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_unwritable_destinations_raise_storage_errors_and_leave_nothing(tmp_path, monkeypatch):
    state = adam_state()
    cases = {tmp_path / "missing" / "s.optstate": "does not exist",
             tmp_path: "is a folder"}
    for dest, fix in cases.items():
        with pytest.raises(osf.StorageError) as e:
            osf.write(state, dest)
        assert e.value.code == "E_WRITE" and isinstance(e.value, OSError) and fix in str(e.value)
    # the disk filling up mid-write: the error names it, no temporary file remains
    import errno as _errno

    def full(*a):
        raise OSError(_errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(osf.StorageError) as e:
        osf.write(state, tmp_path / "s.optstate")
    assert e.value.errno == _errno.ENOSPC and "No space left" in str(e.value)
    monkeypatch.undo()
    assert sorted(f.name for f in tmp_path.iterdir()) == []
