"""OptStateCheckpoint: a run interrupted after 2 of 4 epochs and resumed by the callback into a
changed model ends with the uninterrupted run's weights and Adam slots, compared by role, bit
for bit (CPU, op determinism on, no shuffling); damaged archives fall back; async errors surface.
"""

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402

from workflow_models import adam_slots_by_role, branchy, data, weights_by_role  # noqa: E402

pytestmark = pytest.mark.framework
tf.config.experimental.enable_op_determinism()


class Interrupted(Exception):
    pass


def crash_at(lib, epoch):
    class Crash(lib.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise Interrupted(f"simulated interruption before epoch {e}")
    return Crash()


class Recorder:
    """Weights by role at each epoch's end (a callback built on ``lib``)."""

    def __new__(cls, lib, roles):
        class Rec(lib.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seen = {}

            def on_epoch_end(self, epoch, logs=None):
                self.seen[epoch + 1] = weights_by_role(roles)
        return Rec()


def fit(model, cbs, epochs=4):
    x, y = data()
    return model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
                     callbacks=cbs)


def seed(lib, s):
    if lib is keras:
        keras.utils.set_random_seed(s)
    else:
        lib.utils.set_random_seed(s)


def resume_case(lib, Checkpoint, make_opt, tmp_path, *, async_first=False):
    """Uninterrupted run vs (2 epochs, interruption, resume into a changed model)."""
    seed(lib, 1)
    full, full_roles = branchy(lib, optimizer=make_opt())
    fit(full, [Checkpoint(tmp_path / "full")])

    seed(lib, 1)
    first, _ = branchy(lib, optimizer=make_opt())
    cb = Checkpoint(tmp_path / "run", async_write=async_first)
    with pytest.raises(Interrupted):
        fit(first, [cb, crash_at(lib, 2)])
    cb.wait()  # the interrupted process's last write (a non-daemon thread) finishes
    assert sorted(os.listdir(tmp_path / "run")) == [
        "ckpt-e0001-s000004.optstate", "ckpt-e0002-s000008.optstate"]

    seed(lib, 99)  # another initialization: every value must come from the archive
    changed, changed_roles = branchy(lib, changed=True, optimizer=make_opt())
    resumed = Checkpoint(tmp_path / "run")
    history = fit(changed, [resumed])
    assert os.path.basename(resumed.restored[0]) == "ckpt-e0002-s000008.optstate"
    assert history.epoch == [2, 3]  # continued from the saved epoch
    assert int(changed.optimizer.iterations.numpy()) == int(full.optimizer.iterations.numpy())

    want, got = weights_by_role(full_roles), weights_by_role(changed_roles)
    assert want.keys() == got.keys() and len(want) == 6
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    want, got = adam_slots_by_role(full, full_roles), adam_slots_by_role(changed, changed_roles)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    assert any(np.any(v != 0) for v in want.values())  # trained state, not zeros
    # the last archives of both runs say the same by role: same step, same epoch
    a = osf.read(tmp_path / "full" / "ckpt-e0004-s000016.optstate")
    b = osf.read(tmp_path / "run" / "ckpt-e0004-s000016.optstate")
    assert a.step == b.step == 16
    assert a.metadata["training.epoch"] == b.metadata["training.epoch"] == "4"
    return full, changed


def k3_checkpoint():
    from optstate_format.converters.keras3 import OptStateCheckpoint
    return OptStateCheckpoint


def test_keras3_interrupted_run_resumed_into_changed_model_ends_bitwise_equal(tmp_path):
    # the interrupted run writes asynchronously, the others synchronously: both kinds of
    # archive carry the exact state
    resume_case(keras, k3_checkpoint(), lambda: keras.optimizers.Adam(0.01), tmp_path,
                async_first=True)


def test_keras3_damaged_newest_archive_falls_back_to_the_previous_one(tmp_path):
    Checkpoint = k3_checkpoint()
    seed(keras, 1)
    model, roles = branchy(keras)
    rec = Recorder(keras, roles)
    fit(model, [Checkpoint(tmp_path), rec], epochs=2)
    newest = tmp_path / "ckpt-e0002-s000008.optstate"
    raw = bytearray(newest.read_bytes())
    raw[-10] ^= 0xFF  # one flipped byte in the tensor data: a checksum failure
    newest.write_bytes(bytes(raw))

    seed(keras, 99)
    changed, changed_roles = branchy(keras, changed=True)
    cb = Checkpoint(tmp_path)
    seen = Recorder(keras, changed_roles)

    class Before(keras.callbacks.Callback):  # weights as restored, before any step
        def on_epoch_begin(self, epoch, logs=None):
            if not hasattr(self, "w"):
                self.w, self.epoch = weights_by_role(changed_roles), epoch
    before = Before()
    with pytest.warns(RuntimeWarning, match="ckpt-e0002-s000008.optstate cannot be restored"):
        history = fit(changed, [cb, before, seen], epochs=3)
    assert os.path.basename(cb.restored[0]) == "ckpt-e0001-s000004.optstate"
    assert before.epoch == 1 and history.epoch == [1, 2]
    for k, v in rec.seen[1].items():
        assert np.array_equal(before.w[k], v), k


def test_keras3_no_readable_archive_refuses_and_leaves_the_model_unchanged(tmp_path):
    Checkpoint = k3_checkpoint()
    seed(keras, 1)
    model, _ = branchy(keras)
    fit(model, [Checkpoint(tmp_path)], epochs=1)
    path = tmp_path / "ckpt-e0001-s000004.optstate"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    fresh, roles = branchy(keras)
    before = weights_by_role(roles)
    with pytest.warns(RuntimeWarning), pytest.raises(osf.FormatError) as e:
        fit(fresh, [Checkpoint(tmp_path)], epochs=2)
    assert e.value.code == "E_RESUME" and "ckpt-e0001-s000004.optstate" in str(e.value)
    after = weights_by_role(roles)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert int(fresh.optimizer.iterations.numpy()) == 0


def test_keras3_async_write_error_is_raised_at_the_next_save(tmp_path):
    Checkpoint = k3_checkpoint()
    (tmp_path / "ckpt-e0001-s000004.optstate").mkdir()  # a folder where epoch 1's file goes
    model, _ = branchy(keras)
    cb = Checkpoint(tmp_path, async_write=True)
    with pytest.raises(osf.StorageError) as e:
        fit(model, [cb], epochs=4)
    assert e.value.code == "E_WRITE"
    assert "ckpt-e0001-s000004.optstate" in str(e.value)
    # raised when epoch 2 ended, before its save: two epochs ran, epoch 2's archive not begun
    assert int(model.optimizer.iterations.numpy()) == 8
    assert not (tmp_path / "ckpt-e0002-s000008.optstate").exists()
    assert len(cb.blocked_seconds) == 1


def test_keras3_async_write_error_is_raised_at_the_end_of_training(tmp_path):
    Checkpoint = k3_checkpoint()
    (tmp_path / "ckpt-e0001-s000004.optstate").mkdir()
    model, _ = branchy(keras)
    with pytest.raises(osf.StorageError) as e:
        fit(model, [Checkpoint(tmp_path, async_write=True)], epochs=1)
    assert e.value.code == "E_WRITE"
    assert model._initial_epoch is None


def test_keras3_batch_frequency_names_keep_and_metadata(tmp_path):
    Checkpoint = k3_checkpoint()
    model, _ = branchy(keras)
    fit(model, [Checkpoint(tmp_path, save_freq=3, keep=2)], epochs=2)  # 4 batches an epoch
    # saves after steps 3 (epoch 0, 3 batches done) and 6 (epoch 1, 2 done); keep=2
    assert sorted(os.listdir(tmp_path)) == ["ckpt-e0000-s000003.optstate",
                                            "ckpt-e0001-s000006.optstate"]
    meta = osf.read(tmp_path / "ckpt-e0001-s000006.optstate").metadata
    assert (meta["training.epoch"], meta["training.batch"], meta["training.step"]) == (
        "1", "2", "6")
    model, _ = branchy(keras)
    fit(model, [Checkpoint(tmp_path / "k1", save_freq=4, keep=1)], epochs=2)
    # a save at an epoch's last batch counts as that epoch completed
    assert os.listdir(tmp_path / "k1") == ["ckpt-e0002-s000008.optstate"]
    assert osf.read(tmp_path / "k1" / "ckpt-e0002-s000008.optstate").metadata[
        "training.batch"] == "0"


@pytest.mark.parametrize("kw", [{"save_freq": "hour"}, {"save_freq": 0}, {"keep": 0},
                                {"keep": 1.5}])
def test_bad_arguments_are_refused_with_our_error(kw, tmp_path):
    with pytest.raises(osf.UnsupportedError) as e:
        k3_checkpoint()(tmp_path, **kw)
    assert e.value.code == "E_UNSUPPORTED"


# ---- tf_keras: resume into a changed model, fallback ---------------------------------------
@pytest.mark.parametrize("family", ["new", "legacy"])
def test_tf_keras_interrupted_run_resumed_into_changed_model_ends_bitwise_equal(family,
                                                                               tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    from optstate_format.converters.tf_keras import OptStateCheckpoint
    opts = tf_keras.optimizers.legacy if family == "legacy" else tf_keras.optimizers
    resume_case(tf_keras, OptStateCheckpoint, lambda: opts.Adam(0.01), tmp_path)


def test_tf_keras_damaged_newest_archive_falls_back(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    from optstate_format.converters.tf_keras import OptStateCheckpoint
    seed(tf_keras, 1)
    model, roles = branchy(tf_keras)
    rec = Recorder(tf_keras, roles)
    fit(model, [OptStateCheckpoint(tmp_path), rec], epochs=2)
    newest = tmp_path / "ckpt-e0002-s000008.optstate"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    changed, changed_roles = branchy(tf_keras, changed=True)
    cb = OptStateCheckpoint(tmp_path)
    with pytest.warns(RuntimeWarning, match="ckpt-e0002-s000008.optstate cannot be restored"):
        history = fit(changed, [cb], epochs=2)
    assert os.path.basename(cb.restored[0]) == "ckpt-e0001-s000004.optstate"
    assert history.epoch == [1]
    assert changed._training_state is None  # cleaned up after fit
    # epoch 2 of the resumed run equals epoch 2 of the first run (same data, same state)
    got = weights_by_role(changed_roles)
    for k, v in rec.seen[2].items():
        assert np.array_equal(got[k], v), k
