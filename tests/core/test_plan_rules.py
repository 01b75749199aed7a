"""Rules of the import plan and the journal that no framework is needed to prove."""

import os
import signal

import numpy as np
import pytest

import optstate_format as osf
from optstate_format import _journal
from optstate_format._match import plan_import
from optstate_format.adapter import ABSENT, BaseAdapter, Variable

from helpers import adam_state


def target_like(state, *, global_dtype="int64", slot_dtype="float32"):
    """A target that mirrors ``state`` weight for weight (same hints), as Variables."""
    weights = []
    for w in state.weights:
        slots = {s: Variable((w.path, s), w.shape, slot_dtype) for s in w.slots}
        weights.append(osf.WeightEntry(w.path, w.shape, w.dtype, True, slots=slots,
                                       hints=dict(w.hints),
                                       value=Variable((w.path, "value"), w.shape, w.dtype)))
    globals_ = {k: Variable(k, tuple(np.shape(v)), global_dtype) for k, v in state.globals.items()}
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam", "keras.optimizers"),
                              weights=weights, globals=globals_, producer={"framework": "t"})


# ---- integers never wrap (issue 17.1) ---------------------------------------------------

@pytest.mark.parametrize("value,src,dst", [
    (2 ** 63 + 5, "uint64", "int64"),
    (-1, "int64", "uint64"),
    (-7, "int32", "uint32"),
    (2 ** 31, "int64", "int32"),
])
def test_an_integer_that_does_not_fit_the_target_dtype_is_refused(value, src, dst):
    st = adam_state()
    st.globals["iterations"] = np.array(value, dtype=src)
    st.step = value if value >= 0 else 0
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, target_like(st, global_dtype=dst))
    dtype_problems = [p for p in e.value.problems if p.code == "E_MATCH_DTYPE"]
    assert dtype_problems and "does not fit" in dtype_problems[0].message
    if value < 0:  # a negative counter is also refused outright, strict or not
        with pytest.raises(osf.MatchError) as e:
            plan_import(st, target_like(st, global_dtype=dst), strict=False)
        assert "E_MATCH_STEP" in str(e.value)
        return
    # non-strict imports the rest, but never the wrapped value
    report, assigns = plan_import(st, target_like(st, global_dtype=dst), strict=False)
    assert "iterations" not in {v.handle for v, _ in assigns}
    assert [p.code for p in report.mismatched] == ["E_MATCH_DTYPE"]


def test_integers_that_fit_convert_exactly_between_signed_and_unsigned():
    st = adam_state(step=7)
    st.globals["iterations"] = np.array(7, np.uint64)
    _, assigns = plan_import(st, target_like(st, global_dtype="int64"))
    got = {v.handle: a for v, a in assigns}["iterations"]
    assert got.dtype == np.int64 and int(got) == 7


def test_an_iterations_counter_that_differs_from_the_step_is_refused_even_non_strict():
    st = adam_state(step=4)
    st.globals["iterations"] = np.array(-3, np.int64)
    with pytest.raises(osf.MatchError) as e:
        plan_import(st, target_like(st), strict=False)
    assert [p.code for p in e.value.problems] == ["E_MATCH_STEP"]
    assert "-3" in e.value.problems[0].message and "4" in e.value.problems[0].message


# ---- NaN and Inf are reported on import (issue 17.14) -------------------------------------

def test_nan_and_inf_in_imported_slots_are_noted_in_the_report():
    st = adam_state()
    st.weights[1].slots["v"][0, :2] = [np.nan, np.inf]
    report, assigns = plan_import(st, target_like(st))
    notes = [n for n in report.notes if "NaN/Inf" in n]
    assert notes == [f"{st.weights[1].path} slot 'v': 2 NaN/Inf value(s), imported as they are"]
    got = {v.handle: a for v, a in assigns}[(st.weights[1].path, "v")]
    assert np.isnan(got[0, 0]) and np.isinf(got[0, 1])  # imported, not dropped


def test_finite_state_gets_no_nan_note():
    st = adam_state()
    report, _ = plan_import(st, target_like(st))
    assert not [n for n in report.notes if "NaN" in n]


# ---- the journal: all or nothing whatever fails, whenever (issue 17.3) --------------------

class DictAdapter(BaseAdapter):
    """Variables in a dict; ``fail`` maps a call number of assign/restore to an exception."""

    framework = "dict"

    def __init__(self, values, fail=None):
        self.values = values
        self.fail = dict(fail or {})
        self.calls = 0

    def read(self, handle):
        return self.values[handle]

    def snapshot(self, handle):
        if handle not in self.values:
            return ABSENT
        return np.array(self.values[handle])

    def assign(self, handle, value):
        self.calls += 1
        exc = self.fail.pop(self.calls, None)
        if exc is not None:
            if exc == "SIGINT":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise exc
        self.values[handle] = np.array(value)

    def restore(self, handle, snapshot):
        if snapshot is ABSENT:
            self.calls += 1
            self.values.pop(handle, None)
            return
        self.assign(handle, snapshot)


def plan_of(values):
    return [(Variable(k, np.shape(v), "float32"), np.full(np.shape(v), 9.0, np.float32))
            for k, v in values.items()]


def start_values():
    rng = np.random.default_rng(0)
    return {f"v{i}": rng.standard_normal(4).astype(np.float32) for i in range(6)}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_a_failed_restore_is_retried_and_the_import_still_changes_nothing():
    values = start_values()
    before = {k: v.copy() for k, v in values.items()}
    # the 4th assignment fails; the first restore (call 5) fails once, then succeeds
    ad = DictAdapter(values, {4: RuntimeError("device"), 5: RuntimeError("again")})
    with pytest.raises(osf.OptStateError) as e:
        _journal.apply(ad, plan_of(values))
    assert e.value.code == "E_ASSIGN"
    assert_same(values, before)


def test_a_restore_that_fails_twice_is_reported_as_E_ROLLBACK():
    values = start_values()
    ad = DictAdapter(values, {4: RuntimeError("device"), 5: RuntimeError("again"),
                              6: RuntimeError("and again")})
    with pytest.raises(osf.OptStateError) as e:
        _journal.apply(ad, plan_of(values))
    assert e.value.code == "E_ROLLBACK" and "1 of 4 variables" in str(e.value)


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, whatever the test runner inherited (a background CI
    job starts with SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_an_interrupt_mid_import_and_a_second_one_during_rollback_change_nothing(
        default_sigint):
    values = start_values()
    before = {k: v.copy() for k, v in values.items()}
    # SIGINT after the 3rd assignment lands; another during the first restore (call 5)
    ad = DictAdapter(values, {3: "SIGINT", 5: "SIGINT"})
    with pytest.raises(KeyboardInterrupt):
        _journal.apply(ad, plan_of(values))
    assert_same(values, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_a_process_that_ignores_sigint_keeps_ignoring_it_during_an_import():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        values = start_values()
        ad = DictAdapter(values, {3: "SIGINT"})
        assert _journal.apply(ad, plan_of(values)) == 6  # not turned into KeyboardInterrupt
        assert all(np.all(v == 9.0) for v in values.values())
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_an_interrupt_during_the_last_assignment_leaves_a_complete_import(default_sigint):
    values = start_values()
    ad = DictAdapter(values, {6: "SIGINT"})
    with pytest.raises(KeyboardInterrupt):
        _journal.apply(ad, plan_of(values))
    # the sixth assignment had been made when the interrupt was seen: it rolls back too
    assert all(not np.all(v == 9.0) for v in values.values())


def test_state_created_for_the_import_is_removed_again_on_failure():
    values = start_values()
    before = {k: v.copy() for k, v in values.items()}
    plan = plan_of(values) + [(Variable("lazy", (4,), "float32"), np.ones(4, np.float32))]
    ad = DictAdapter(values, {7: RuntimeError("device")})
    plan.append((Variable("v0", (4,), "float32"), np.zeros(4, np.float32)))
    with pytest.raises(osf.OptStateError):
        _journal.apply(ad, plan)
    assert "lazy" not in values
    assert_same(values, before)


def test_without_rollback_a_failure_says_the_import_is_partial():
    values = start_values()
    ad = DictAdapter(values, {3: RuntimeError("device")})
    with pytest.raises(osf.OptStateError) as e:
        _journal.apply(ad, plan_of(values), rollback=False)
    assert e.value.code == "E_ASSIGN" and "partly updated" in str(e.value)
    assert sum(np.all(v == 9.0) for v in values.values()) == 2
