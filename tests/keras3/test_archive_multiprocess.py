"""Two JAX processes (jax.distributed on localhost, 2 CPU devices each) export one Keras 3
model into one sharded archive (spec 14.10): under DataParallel every tensor is replicated
and written once; under ModelParallel the split kernel is written as its two halves, one by
each process. The archive is then read, checked and imported by this single process."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("jax")

import optstate_format as osf  # noqa: E402
from crafting import damage_piece  # noqa: E402
from keras_models import import_into_two_dense  # noqa: E402

pytestmark = pytest.mark.framework
WORKER = Path(__file__).resolve().parent / "archive_mp_worker.py"
IMPORTER = Path(__file__).resolve().parent / "archive_mp_import_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(script, args_of, n):
    """Run ``n`` processes of ``script`` on localhost, bounded in time, never left behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("KERAS_BACKEND", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script)] + args_of(p, port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for p in range(n)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:  # bounded in time, and never left behind
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _export(tmp_path, mode):
    archive, expected = tmp_path / "run.optstate", tmp_path / "expected.npz"
    _spawn(WORKER, lambda p, port: [str(p), port, mode, str(archive), str(expected)], 2)
    return archive, dict(np.load(expected))


@pytest.fixture(scope="module")
def _mp_saved(tmp_path_factory):
    """One ModelParallel export by 2 processes, shared by the tests that only read it."""
    return _export(tmp_path_factory.mktemp("mp"), "mp")


@pytest.fixture
def mp_export(_mp_saved, tmp_path):
    """A private copy of the ModelParallel archive (a test may damage it) and its values,
    with the expected.npz beside it."""
    archive, want = _mp_saved
    shutil.copytree(archive, tmp_path / "run.optstate")
    shutil.copy(archive.parent / "expected.npz", tmp_path / "expected.npz")
    return tmp_path / "run.optstate", want


def _check_against(st, want):
    n = 0
    for w in st.weights:
        for slot in ("m", "v"):
            np.testing.assert_array_equal(w.slots[slot], want[f"{w.path}|{slot}"], err_msg=w.path)
            n += 1
        np.testing.assert_array_equal(w.value, want[f"{w.path}|value"], err_msg=w.path)
    assert int(st.globals["iterations"]) == 7 and st.step == 7
    return n


def test_data_parallel_two_processes_write_replicated_state_once(tmp_path):
    archive, want = _export(tmp_path, "dp")
    st = osf.read(archive)
    assert _check_against(st, want) == 8
    doc = osf.read_header(archive)
    assert "pieces" not in doc["archive"]
    assert all("-p00000-" in f for f in doc["archive"]["files"])  # replicas: process 0 only
    assert osf.check(archive).valid
    import_into_two_dense(archive, want)


def test_model_parallel_each_process_writes_its_half_of_the_split_kernel(
        tmp_path, mp_export):
    archive, want = mp_export
    st = osf.read(archive)
    assert _check_against(st, want) == 8
    doc = osf.read_header(archive)
    pieces = doc["archive"]["pieces"]
    assert {"slot:d1/kernel:m", "slot:d1/kernel:v", "weight:d1/kernel"} <= set(pieces)
    for key in ("slot:d1/kernel:m", "weight:d1/kernel"):
        parts = pieces[key]["parts"]
        assert [(p["start"], p["stop"]) for p in parts] == [([0, 0], [8, 8]), ([0, 8], [8, 16])]
        assert "-p00000-" in parts[0]["file"] and "-p00001-" in parts[1]["file"]
    assert "slot:d2/kernel:m" in doc["archive"]["shards"]  # replicated: whole, once
    assert osf.check(archive).valid
    import_into_two_dense(archive, want)


def _tensor_bytes(archive):
    st = osf.read(archive)
    return sum(np.asarray(a).nbytes for w in st.weights for a in (w.value, *w.slots.values())
               ) + sum(np.asarray(a).nbytes for a in st.globals.values())


def test_saved_by_two_processes_imported_in_other_layouts_and_process_counts(
        tmp_path, mp_export):
    """Resharding on import: saved by 2 processes x 2 devices with the kernel split across
    the processes; imported by 2 processes x 2 devices (ModelParallel, then DataParallel)
    and by 1 process x 4 devices (ModelParallel): every piece each process holds equals the
    saved values, and the target's layout is kept. Each of 2 processes under ModelParallel
    reads only its half of d1's kernel, m and v (spec 14.11); under DataParallel, where it
    holds everything, it reads everything."""
    archive, _ = mp_export
    expected = tmp_path / "expected.npz"
    total, half = _tensor_bytes(archive), 8 * 16 * 4 // 2
    for nprocs, mode in ((2, "mp"), (2, "dp"), (1, "mp")):
        outs = _spawn(IMPORTER, lambda p, port: [str(p), str(nprocs), port, mode, str(archive),
                                                 str(expected)], nprocs)
        for p, out in enumerate(outs):
            assert f"process {p} of {nprocs} imported" in out, out[-2000:]
            read = {(2, "mp"): total - 3 * half, (2, "dp"): total, (1, "mp"): None}
            assert f"process {p} read {read[nprocs, mode]} bytes" in out, out[-2000:]


def test_a_piece_damaged_for_one_process_fails_every_process_and_changes_nothing(
        tmp_path, mp_export):
    """Process 1's half of d1's kernel v is damaged; process 0 never reads it: both refuse
    the import (agreeing before any assignment) and keep every variable as it was."""
    archive, _ = mp_export
    damage_piece(archive, "slot:d1/kernel:v", [0, 8], byte=2, mask=0x10)
    outs = _spawn(IMPORTER, lambda p, port: [str(p), "2", port, "mp", str(archive),
                                             str(tmp_path / "expected.npz"), "refused"], 2)
    for p, out in enumerate(outs):
        assert f"process {p} of 2 refused: E_CHECKSUM; nothing changed" in out, out[-2000:]
    assert "process 1 of 2 failed" in outs[0]


def test_saved_by_one_process_of_four_devices_imported_by_two_processes_of_two(tmp_path):
    """The reverse (issue 15): saved by 1 process x 4 devices (ModelParallel, d1's kernel
    split over the 'model' axis), imported by 2 processes x 2 devices (jax.distributed),
    ModelParallel with the 'model' axis across the processes, then DataParallel: every
    piece each process holds equals the saved values and the target's layout is kept."""
    archive, expected = tmp_path / "run.optstate", tmp_path / "expected.npz"
    _spawn(WORKER, lambda p, port: [str(p), port, "mp", str(archive), str(expected), "1"], 1)
    want = dict(np.load(expected))
    assert _check_against(osf.read(archive), want) == 8
    doc = osf.read_header(archive)
    assert "pieces" not in doc["archive"]  # one process holds everything: stored whole
    assert not any("-p0" in f for f in doc["archive"]["files"])
    for mode in ("mp", "dp"):
        outs = _spawn(IMPORTER, lambda p, port: [str(p), "2", port, mode, str(archive),
                                                 str(expected)], 2)
        for p, out in enumerate(outs):
            # 4 variables x (value, m, v) x the 2 devices of this process
            assert f"process {p} of 2 imported, 24 pieces equal" in out, out[-2000:]


def test_an_assignment_failing_in_one_process_rolls_back_every_process(
        tmp_path, mp_export):
    """Process 0's third assignment fails (a device lost) after process 1 assigned all of
    its state: both refuse with E_ASSIGN and hold exactly what they held before (spec 14.11,
    the agreement after the last assignment)."""
    archive, _ = mp_export
    outs = _spawn(IMPORTER, lambda p, port: [str(p), "2", port, "mp", str(archive),
                                             str(tmp_path / "expected.npz"), "fail-assign"], 2)
    for p, out in enumerate(outs):
        assert f"process {p} of 2 refused: E_ASSIGN; nothing changed" in out, out[-2000:]
    assert "device lost" in outs[0] and "process 0 of 2 failed" in outs[1]
