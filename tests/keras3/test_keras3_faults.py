"""Keras 3 under faults: real interrupts at random moments, hostile optimizer descriptions."""

import math
import os
import signal
import threading
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402
from optstate_format import _api  # noqa: E402
from optstate_format.converters import keras3 as conv  # noqa: E402

from keras_models import small_model  # noqa: E402

pytestmark = pytest.mark.framework


def train(model, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.train_on_batch(rng.standard_normal((4, 8, 3)).astype("float32"),
                             rng.standard_normal((4, 2)).astype("float32"))


def values(model):
    return [v.numpy().tobytes() for v in model.optimizer.variables] + [
        w.tobytes() for w in model.get_weights()]


def put(model, saved):
    n = len(model.optimizer.variables)
    for v, raw in zip(model.optimizer.variables, saved[:n]):
        v.assign(np.frombuffer(raw, v.numpy().dtype).reshape(v.shape))
    model.set_weights([np.frombuffer(raw, w.dtype).reshape(w.shape)
                       for w, raw in zip(model.get_weights(), saved[n:])])


def test_ctrl_c_at_random_moments_never_leaves_a_mix_of_old_and_new(tmp_path):
    """Hundreds of real SIGINTs, each at a random moment of an import: afterwards the model
    holds either exactly its old state or exactly the file's, never a mix."""
    a, _ = small_model("adam")
    train(a, 2, 0)
    path = osf.export_state(a, tmp_path / "a.optstate", include_weights=True)
    b, _ = small_model("adam")
    train(b, 1, 3)
    old = values(b)
    osf.import_state(b, path, include_weights=True)
    new = values(b)
    assert old != new
    t0 = time.perf_counter()
    for _ in range(5):
        put(b, old)
        osf.import_state(b, path, include_weights=True)
    span = (time.perf_counter() - t0) / 5
    rng = np.random.default_rng(1)
    outcomes = {"old": 0, "new": 0}
    trials = 300
    # Python's own SIGINT handler, whatever the runner inherited (a background job ignores it)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _random_interrupts(b, path, old, new, rng, span, trials, outcomes)
    finally:
        signal.signal(signal.SIGINT, inherited)
    # the interrupts really landed inside imports, in both outcomes
    assert outcomes["old"] >= trials // 10 and outcomes["new"] >= 1, outcomes


def _random_interrupts(b, path, old, new, rng, span, trials, outcomes):
    for _ in range(trials):
        put(b, old)
        delay = float(rng.uniform(0, span * 1.2))
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
        try:
            timer.start()
            try:
                osf.import_state(b, path, include_weights=True)
            finally:
                timer.join()
                time.sleep(0.002)  # a signal sent just now is delivered here, not later
        except KeyboardInterrupt:
            pass
        now = values(b)
        assert now in (old, new), "a mix of old and new values"
        outcomes["old" if now == old else "new"] += 1


def hostile_state(a, **edit):
    state = _api.source_state(a, materialize=True)
    for key, value in edit.items():
        setattr(state.optimizer, key, value)
    return state


@pytest.mark.parametrize("edit", [
    {"learning_rate": {"kind": "constant", "value": {"nested": 1}}},
    {"learning_rate": {"kind": "constant", "value": math.nan}},
    {"learning_rate": {"kind": "schedule", "class_name": "LearningRateSchedule",
                       "config": {}}},
    {"learning_rate": {"kind": "schedule", "class_name": "ExponentialDecay",
                       "config": {"decay_steps": 2}}},
    {"learning_rate": "fast"},
    {"hyperparameters": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
    {"hyperparameters": {"beta_1": "high"}},
    {"wrappers": [1, "x"]},
    {"class_name": 5},
])
def test_optimizer_from_state_ends_every_hostile_description_in_our_errors(edit):
    a, _ = small_model("adam")
    train(a, 1, 0)
    state = hostile_state(a, **edit)
    with pytest.raises(osf.OptStateError) as e:
        conv.optimizer_from_state(state)
    assert e.value.code in ("E_UNSUPPORTED", "E_SCHEMA")


def test_optimizer_from_state_keeps_accepting_what_it_should():
    a, _ = small_model(keras.optimizers.Adam(
        keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5),
        beta_1=0.8))
    train(a, 1, 0)
    state = _api.source_state(a, materialize=True)
    opt = conv.optimizer_from_state(state)
    assert isinstance(opt, keras.optimizers.Adam) and opt.beta_1 == 0.8
    assert opt.learning_rate is not None and opt._learning_rate.decay_steps == 2
    # a key the schedule does not take (another Keras release's, say) is dropped, not fatal
    state.optimizer.learning_rate["config"]["from_another_release"] = 1
    assert conv.optimizer_from_state(state)._learning_rate.decay_rate == 0.5
