"""Keras 3 on the JAX and torch backends, and state moved between backends (each side in
a fresh process: a Keras process has one backend). A backend whose package is missing is
skipped; `make test` installs both."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")
pytestmark = pytest.mark.framework


def backend(name):
    """A parameter that is skipped when the backend's package is not installed."""
    if name == "tensorflow" or importlib.util.find_spec(name) is not None:
        return name
    return pytest.param(name, marks=pytest.mark.skip(reason=f"{name} is not installed "
                                                            f"(pip install -e '.[{name}]')"))


WORKER = Path(__file__).resolve().parent / "backend_worker.py"


def run(backend, mode, file, out):
    res = subprocess.run([sys.executable, str(WORKER), backend, mode, str(file), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return np.load(out)


@pytest.mark.parametrize("src,dst", [
    ("tensorflow", "jax"), ("jax", "tensorflow"), ("tensorflow", "torch"), ("torch", "jax"),
    ("jax", "torch")])
def test_state_lands_on_each_role_across_backends(src, dst, tmp_path):
    for name in (src, dst):
        if name != "tensorflow" and importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[{name}]')")
    """Exported by one backend from a model built a-first; imported by another into one
    built b-first with an Activation inserted: every slot and weight on its role."""
    f = tmp_path / "run.optstate"
    exported = run(src, "export", f, tmp_path / "a.npz")
    imported = run(dst, "import", f, tmp_path / "b.npz")
    assert sorted(exported.files) == sorted(imported.files) and len(exported.files) == 31
    for k in exported.files:
        if k == "iterations":  # int64 under TensorFlow, int32 under JAX: the value moves
            assert int(exported[k]) == int(imported[k]) == 3
        else:
            assert exported[k].dtype == imported[k].dtype, k
            assert exported[k].tobytes() == imported[k].tobytes(), k
    assert np.any(exported["a1/kernel/m"] != 0) and np.any(exported["b1/kernel/v"] != 0)
    # the two branches hold different moments, so a swap would have been caught
    assert not np.array_equal(exported["a1/kernel/m"], exported["b1/kernel/m"])


@pytest.mark.parametrize("name", [backend("jax"), backend("torch")])
def test_resume_into_a_model_built_in_another_order_is_bitwise(name, tmp_path):
    r = run(name, "resume", tmp_path / "run.optstate", tmp_path / "r.npz")
    keys = [k[len("full:"):] for k in r.files if k.startswith("full:")]
    assert len(keys) == 31 and int(r["resumed:iterations"]) == 5
    for k in keys:
        assert r[f"full:{k}"].tobytes() == r[f"resumed:{k}"].tobytes(), k


@pytest.mark.parametrize("name", [backend("jax"), backend("torch")])
def test_failed_import_restores_trained_and_fresh_optimizers_bitwise(name, tmp_path):
    r = run(name, "rollback", tmp_path / "run.optstate", tmp_path / "r.npz")
    for name in ("trained", "fresh"):
        keys = [k.split(":", 2)[2] for k in r.files if k.startswith(f"{name}:before:")]
        assert len(keys) == 31
        for k in keys:
            assert r[f"{name}:before:{k}"].tobytes() == r[f"{name}:after:{k}"].tobytes(), k
    assert int(r["trained:before:iterations"]) == 1 and int(r["fresh:before:iterations"]) == 0


@pytest.mark.parametrize("name", [backend("jax"), backend("torch")])
def test_every_builtin_optimizer_continues_identically_after_import(name, tmp_path):
    """12 optimizers (the torch backend has its own subclass of each): export, import into
    a model built b-first, one more step on both: the same weights, role by role."""
    r = run(name, "optimizers", tmp_path / "run.optstate", tmp_path / "r.npz")
    keys = sorted({k.rsplit(":", 1)[0] for k in r.files})
    assert len(keys) == 12 * 10  # 12 optimizers x 5 layers x (kernel, bias)
    for k in keys:
        assert r[f"{k}:src"].tobytes() == r[f"{k}:dst"].tobytes(), k


@pytest.mark.parametrize("name", [backend("jax"), backend("torch")])
def test_checkpoint_callback_resumes_a_changed_model_bitwise(name, tmp_path):
    """OptStateCheckpoint under JAX and torch: written asynchronously during fit, resumed by
    a new callback into a model built in another order with parameterless layers inserted;
    after 4 epochs every weight and Adam slot equals the uninterrupted run's, by role."""
    r = run(name, "callback", tmp_path / "unused", tmp_path / "r.npz")
    keys = [k[len("full:"):] for k in r.files if k.startswith("full:")]
    assert len(keys) == 6 + 2 * 6  # 3 roles x (kernel, bias): weights, m and v
    for k in keys:
        assert r[f"full:{k}"].dtype == r[f"resumed:{k}"].dtype, k
        assert r[f"full:{k}"].tobytes() == r[f"resumed:{k}"].tobytes(), k
    assert any(np.any(r[f"full:{k}"] != 0) for k in keys if k.startswith("s:"))
