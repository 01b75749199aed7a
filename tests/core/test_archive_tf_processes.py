"""The tf.distribute exchanges of spec 14.10 without TensorFlow: two threads stand in for two
workers of a MultiWorkerMirroredStrategy job, and a dictionary with TensorFlow's semantics
(a key is set once; a read waits for it, up to a timeout) stands in for the coordination
service's key-value store. _TfProcesses runs unchanged on it, through write_distributed."""

import os
import threading

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _archive
from optstate_format.converters import _tf_distribute


class KV:
    """The coordination service's key-value store, as TensorFlow behaves."""

    def __init__(self):
        self.data, self.cond, self.sets = {}, threading.Condition(), 0

    def set_config_key_value(self, key, value):
        with self.cond:
            if key in self.data:
                raise RuntimeError(f"AlreadyExistsError: {key}")  # TensorFlow refuses it too
            self.data[key] = value
            self.sets += 1
            self.cond.notify_all()

    def get_config_key_value(self, key, timeout_in_ms=0):
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.data, timeout_in_ms / 1000 or None):
                raise TimeoutError(f"DeadlineExceededError: GetKeyValue() timed out with key: "
                                   f"{key}")
            return self.data[key]

    def delete_config_key_value(self, key):
        with self.cond:
            self.data.pop(key, None)


def _workers(kv, n=2, timeout=30.0):
    """One _TfProcesses per worker, each with its own call counter (as separate processes)."""
    return [type(f"Worker{i}", (_tf_distribute._TfProcesses,),
                 {"_calls": 0, "_mine": [], "TIMEOUT": timeout})(None, i, n, ctx=kv)
            for i in range(n)]


class OnRead:
    """A variable synchronized on read: reading it is a collective every worker must make."""

    synchronization = "ON_READ"

    def __init__(self):
        self.reads = 0


def _state(on_read=None, fail=False):
    def boom():
        raise RuntimeError("device lost")
    value = np.arange(12, dtype=np.float32).reshape(3, 4)

    def read():
        on_read.reads += 1
        return value * 2
    m = osf.LazyTensor((3, 4), "float32", boom) if fail else value
    weights = [osf.WeightEntry("dense/kernel", (3, 4), "float32", slots={"m": m, "v": value + 1})]
    if on_read is not None:
        weights.append(osf.WeightEntry("bn/moving_mean", (3, 4), "float32", slots={},
                                       value=_archive.Sourced((3, 4), "float32", read, on_read)))
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=3, weights=weights,
                              globals={"iterations": np.array(3, np.int64)})


def _run(path, procs, states):
    errors = [None] * len(procs)

    def worker(i):
        try:
            _archive.write_distributed(states[i], path, max_shard_size=32, fsync=False,
                                       procs=procs[i])
        except Exception as e:  # noqa: BLE001 - collected for the assertions
            errors[i] = e
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_two_workers_write_one_archive_through_the_key_value_store(tmp_path):
    kv, path = KV(), tmp_path / "run.optstate"
    procs = _workers(kv)
    reads = [OnRead(), OnRead()]
    assert _run(path, procs, [_state(reads[0]), _state(reads[1])]) == [None, None]
    assert [r.reads for r in reads] == [1, 1]  # the on-read value: read by every worker
    st = osf.read(path)
    np.testing.assert_array_equal(st.weight("dense/kernel").slots["v"],
                                  np.arange(12, dtype=np.float32).reshape(3, 4) + 1)
    np.testing.assert_array_equal(st.weight("bn/moving_mean").value,
                                  np.arange(12, dtype=np.float32).reshape(3, 4) * 2)
    files = [f for f in os.listdir(path) if f.startswith("shard-")]
    assert files and all("-p00000-" in f for f in files)  # replicated: worker 0 writes all
    # a second export: new keys (a key is never set twice), the old ones deleted
    assert _run(path, procs, [_state(), _state()]) == [None, None]
    assert [p._calls for p in procs] == [6, 6] and kv.sets == 8
    # only the last export's gather and answer remain (deleted at the next gather)
    assert sorted(kv.data) == ["optstate_format/4/0", "optstate_format/4/1",
                               "optstate_format/5/0"]


def test_a_failing_worker_fails_both_and_the_previous_archive_stays(tmp_path):
    kv, path = KV(), tmp_path / "run.optstate"
    procs = _workers(kv)
    assert _run(path, procs, [_state(), _state()]) == [None, None]
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    errors = _run(path, procs, [_state(fail=True), _state()])
    assert all(isinstance(e, osf.StorageError) and e.code == "E_WRITE" for e in errors), errors
    assert all("process 0: RuntimeError: device lost" in str(e) for e in errors)
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    # and the job goes on: the next export works
    assert _run(path, procs, [_state(), _state()]) == [None, None]


def test_a_worker_that_never_answers_is_our_error_not_a_hang(tmp_path):
    kv, path = KV(), tmp_path / "new.optstate"
    (alone,) = _workers(kv, timeout=0.2)[1:]  # worker 1 of 2; worker 0 never comes
    with pytest.raises(osf.StorageError) as e:
        _archive.write_distributed(_state(), path, max_shard_size=32, fsync=False,
                                   procs=alone)
    assert e.value.code == "E_WRITE"
    assert "worker 0 did not answer" in str(e.value) and "DeadlineExceeded" in str(e.value)
    assert not path.exists()


def test_the_limit_comes_from_the_environment_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.setenv("OPTSTATE_PROCESS_TIMEOUT", "2.5")
    assert _tf_distribute._TfProcesses(None, 0, 2, ctx=KV()).timeout == 2.5
    for bad in ("0", "-1", "inf", "nan", "soon"):
        monkeypatch.setenv("OPTSTATE_PROCESS_TIMEOUT", bad)
        with pytest.raises(osf.UnsupportedError, match="OPTSTATE_PROCESS_TIMEOUT"):
            _tf_distribute._TfProcesses(None, 0, 2, ctx=KV())


def test_a_tensorflow_whose_private_modules_moved_stops_the_export_naming_its_version(
        monkeypatch, tmp_path):
    """The workers are found through TensorFlow's private modules (one table in
    converters/_tf_distribute.py); a release without them must not make every worker write
    an archive of its own: the export stops with UnsupportedError naming the version."""
    import sys
    import types

    class MWMS:
        pass
    fake = types.ModuleType("tensorflow")  # a module, not a package: no tensorflow.python
    fake.__version__ = "9.9.9"
    fake.distribute = types.SimpleNamespace(MultiWorkerMirroredStrategy=MWMS,
                                            has_strategy=lambda: True, get_strategy=MWMS)
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    for name in [n for n in sys.modules if n.startswith("tensorflow.")]:  # a real one loaded
        monkeypatch.delitem(sys.modules, name)  # earlier in this process must not answer
    _tf_distribute._private.cache_clear()
    try:
        with pytest.raises(osf.UnsupportedError) as e:
            osf.write(_state(), tmp_path / "run.optstate", max_shard_size=32, fsync=False)
    finally:
        _tf_distribute._private.cache_clear()
    assert "tensorflow 9.9.9 changed: tensorflow.python.distribute:multi_worker_util is " \
           "missing" in str(e.value)
    assert os.listdir(tmp_path) == []
