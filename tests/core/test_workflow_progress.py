"""Progress bars: drawn only on a terminal (or when forced), and a tracked write is the same
file, byte for byte, with the bar advanced by exactly the tensor bytes written."""

import doctest
import io

import numpy as np

import optstate_format as osf
from optstate_format import _progress
from optstate_format._state import LazyTensor, OptimizerInfo, OptimizerState, WeightEntry


def _state():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((64, 32)).astype(np.float32)
    return OptimizerState(OptimizerInfo("adam", "Adam"), step=7, weights=[
        WeightEntry("dense/kernel", (64, 32), "float32", value=k,
                    slots={"m": LazyTensor((64, 32), "float32", lambda: k * 2),
                           "v": k * k})],
        globals={"iterations": np.array(7, np.int64)})


def test_tracked_write_is_byte_identical_and_counts_every_byte(tmp_path):
    class Bar:
        n = 0

        def update(self, n):
            self.n += n
    bar = Bar()
    plain = osf.write(_state(), tmp_path / "a.optstate")
    total = _progress.state_bytes(_state())
    tracked = osf.write(_progress.tracked(_state(), bar), tmp_path / "b.optstate")
    assert plain.read_bytes() == tracked.read_bytes()
    assert bar.n == total == 3 * 64 * 32 * 4 + 8


def test_bar_only_on_a_terminal_or_when_forced(monkeypatch):
    monkeypatch.delenv("OPTSTATE_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal
    assert not _progress.wanted(10 * _progress.MIN_BYTES)
    monkeypatch.setenv("OPTSTATE_PROGRESS", "1")
    assert _progress.wanted(1)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with _progress.progress(1000, "writing x") as bar:
        bar.update(1000)
    assert "writing x" in err.getvalue()
    monkeypatch.setenv("OPTSTATE_PROGRESS", "0")
    assert not _progress.wanted(10 * _progress.MIN_BYTES)


def test_docstring_examples_of_the_workflow_modules():
    from optstate_format.converters import _keras_callback
    for mod in (_progress, _keras_callback):
        res = doctest.testmod(mod)
        assert res.attempted > 0 and res.failed == 0


def test_read_reports_every_byte_it_reads_to_its_progress_callback(tmp_path):
    """The CLI's bars for check/inspect/diff are fed by read()'s progress callback."""
    import optstate_format as osf
    from helpers import adam_state
    path = osf.write(adam_state(n_weights=5, with_values=True), tmp_path / "p.optstate")
    seen = []
    state = osf.read(path, progress=seen.append)
    tensors = sum(a.nbytes for w in state.weights for a in [*w.slots.values(), w.value])
    tensors += sum(np.asarray(g).nbytes for g in state.globals.values())
    assert sum(seen) == tensors and len(seen) >= 1
    seen.clear()
    assert osf.check(path, progress=seen.append).valid and sum(seen) == tensors
