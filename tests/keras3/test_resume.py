"""Exact resume in a fresh process: N steps, export, new process imports, M more steps,
equals an uninterrupted N+M run bit for bit (CPU, op determinism on)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytestmark = pytest.mark.framework

WORKER = Path(__file__).resolve().parent / "resume_worker.py"


def run(mode, file, out):
    res = subprocess.run([sys.executable, str(WORKER), mode, str(file), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def test_resume_in_a_fresh_process_is_bitwise_identical(tmp_path):
    state = tmp_path / "run.optstate"
    run("full", state, tmp_path / "full.npz")
    run("first", state, tmp_path / "first.npz")
    run("second", state, tmp_path / "second.npz")
    full, second = np.load(tmp_path / "full.npz"), np.load(tmp_path / "second.npz")
    first = np.load(tmp_path / "first.npz")
    assert int(full["it"]) == int(second["it"]) == 7
    keys = [k for k in full.files if k != "it"]
    assert keys and all(np.array_equal(full[k], second[k]) for k in keys)
    # and the continuation really moved the weights (not a vacuous comparison)
    assert not all(np.array_equal(first[k], second[k]) for k in keys)
