"""Two workers of a tf.distribute.MultiWorkerMirroredStrategy job (localhost, CPU, Keras 3 on
TensorFlow, a custom step through strategy.run) export one sharded archive (spec 14.10):
every tensor is mirrored, so worker 0 writes each once and commits once both have written;
the archive holds the workers' state bit for bit and imports into a fresh model in one
process; a failure injected in either worker fails both with E_WRITE and leaves the previous
archive as it was. The job runs once (tests/support/mwms_worker.py), the tests check it."""

import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from keras_models import import_into_two_dense  # noqa: E402
from mwms import (check_each_tensor_once, check_failures_kept_the_archive,  # noqa: E402
                  check_state, run_job, worker_values)

pytestmark = pytest.mark.framework


def _path(name):
    return name


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return run_job("keras3", tmp_path_factory.mktemp("mwms_keras3"))


def test_each_tensor_is_written_once_by_worker_0(job):
    archive, _, outs = job
    # 4 weights x (value, m, v), the globals iterations and learning_rate
    assert check_each_tensor_once(archive) == 14
    for i, out in enumerate(outs):
        assert f"worker {i} exported" in out


def test_the_archive_holds_the_workers_state_bit_for_bit(job):
    archive, outdir, _ = job
    want = worker_values(outdir)
    assert int(want["iterations"]) == 3
    assert check_state(archive, want, _path) == 12


def test_a_fresh_model_in_one_process_imports_it(job):
    archive, outdir, _ = job
    model = import_into_two_dense(archive, worker_values(outdir))
    assert int(model.optimizer.iterations.numpy()) == 3


def test_every_worker_imports_it_outside_the_strategy_scope(job):
    for i, out in enumerate(job[2]):
        assert f"worker {i} imported, 13 values equal" in out, out[-2000:]


def test_a_failure_in_any_worker_fails_all_and_keeps_the_previous_archive(job):
    archive, outdir, outs = job
    check_failures_kept_the_archive(archive, outdir, outs, worker_values(outdir), _path)
