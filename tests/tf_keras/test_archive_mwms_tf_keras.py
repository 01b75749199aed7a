"""Two workers of a tf.distribute.MultiWorkerMirroredStrategy job (localhost, CPU) train a
tf_keras model with ``fit`` (a legacy Adam, a BatchNormalization whose moving statistics are
on-read variables: reading one is a collective, so every worker reads it) and export one
sharded archive (spec 14.10): worker 0 writes each tensor once and commits once both have
written; the archive holds the workers' state bit for bit and imports into a fresh model in
one process; a failure injected in either worker fails both with E_WRITE and leaves the
previous archive as it was. The job runs once (tests/support/mwms_worker.py)."""

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402
from mwms import (check_each_tensor_once, check_failures_kept_the_archive,  # noqa: E402
                  check_state, run_job, worker_values)

pytestmark = pytest.mark.framework


def _path(path):
    return f"{path}:0"  # the archive's canonical path -> tf_keras's variable name


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return run_job("tf_keras", tmp_path_factory.mktemp("mwms_tf_keras"))


def test_each_tensor_is_written_once_by_worker_0(job):
    archive, _, outs = job
    # 6 trainable weights x (value, m, v), 2 moving statistics, iterations, learning_rate
    assert check_each_tensor_once(archive) == 22
    for i, out in enumerate(outs):
        assert f"worker {i} exported" in out


def test_the_archive_holds_the_workers_state_bit_for_bit(job):
    archive, outdir, _ = job
    want = worker_values(outdir)
    assert int(want["iterations"]) > 0
    assert not np.all(want["bn/moving_mean:0|value"] == 0)  # fit moved the statistics
    assert check_state(archive, want, _path) == 20


def test_a_fresh_model_in_one_process_imports_it(job):
    archive, outdir, _ = job
    want = worker_values(outdir)
    L = tf_keras.layers
    inp = tf_keras.Input((8,), name="x")
    out = L.Dense(4, name="d2")(L.BatchNormalization(name="bn")(L.Dense(16, name="d1")(inp)))
    model = tf_keras.Model(inp, out)
    model.compile(optimizer=tf_keras.optimizers.legacy.Adam(0.01), loss="mse")
    report = osf.import_state(model, archive, include_weights=True)
    assert report.ok
    opt = model.optimizer
    for var in model.trainable_variables:
        np.testing.assert_array_equal(var.numpy(), want[f"{var.name}|value"])
        for s in ("m", "v"):
            np.testing.assert_array_equal(opt.get_slot(var, s).numpy(), want[f"{var.name}|{s}"])
    for var in model.non_trainable_variables:
        np.testing.assert_array_equal(var.numpy(), want[f"{var.name}|value"])
    assert int(opt.iterations.numpy()) == int(want["iterations"])


def test_every_worker_imports_it_outside_the_strategy_scope(job):
    for i, out in enumerate(job[2]):
        assert f"worker {i} imported, 21 values equal" in out, out[-2000:]


def test_a_failure_in_any_worker_fails_all_and_keeps_the_previous_archive(job):
    archive, outdir, outs = job
    check_failures_kept_the_archive(archive, outdir, outs, worker_values(outdir), _path)
