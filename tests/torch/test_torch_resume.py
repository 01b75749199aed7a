"""Exact resume in a fresh process: N steps, export, a new process (changed model, groups in
another order, fresh scheduler) imports and runs M more; equal to an uninterrupted N+M run.

The uninterrupted run and the first part run here (torch is imported already); only the
resuming side needs a fresh process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.framework

WORKER = Path(__file__).resolve().parent / "torch_resume_worker.py"


def run(mode, file, out):
    res = subprocess.run([sys.executable, str(WORKER), mode, str(file), str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_resume_in_a_fresh_process_is_bitwise_identical(tmp_path):
    state = tmp_path / "run.optstate"
    import torch_resume_worker as worker
    worker.main("full", state, tmp_path / "full.npz")
    worker.main("first", state, tmp_path / "first.npz")
    run("second", state, tmp_path / "second.npz")
    full, first, second = (np.load(tmp_path / f"{m}.npz") for m in ("full", "first", "second"))
    keys = sorted(k for k in full.files if k != "lr")
    assert keys == sorted(k for k in second.files if k != "lr") and len(keys) == 8
    assert all(np.array_equal(full[k], second[k]) for k in keys)
    assert sorted(full["lr"]) == sorted(second["lr"])  # the scheduler continued too
    assert not all(np.array_equal(first[k], second[k]) for k in keys)
