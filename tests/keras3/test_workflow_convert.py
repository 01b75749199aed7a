"""convert(): checkpoints people already have become archives that import by role into a
rebuilt, changed Keras 3 model; what cannot be converted exactly is refused by name."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402
from optstate_format.converters._convert import convert  # noqa: E402

from workflow_models import adam_slots_by_role, branchy, data, weights_by_role  # noqa: E402

pytestmark = pytest.mark.framework


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(3)  # op determinism may be on (random ops then need a seed)


def trained(lib, opt=None, epochs=1):
    model, roles = branchy(lib, optimizer=opt)
    x, y = data()
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0)
    return model, roles


def assert_reaches_rebuilt_keras3_model_by_role(src_model, src_roles, archive):
    """The archive imports into a changed Keras 3 model; every weight and Adam slot lands on
    the weight playing the same role (checked through the layers, not optstate's matching)."""
    target, roles = branchy(keras, changed=True)
    report = osf.import_state(target, archive, include_weights=True)
    assert report.ok and len(report.matched) == 6
    want, got = weights_by_role(src_roles), weights_by_role(roles)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    want, got = adam_slots_by_role(src_model, src_roles), adam_slots_by_role(target, roles)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    assert any(np.any(v != 0) for v in want.values())
    assert int(target.optimizer.iterations.numpy()) == int(
        src_model.optimizer.iterations.numpy()) == osf.read(archive).step


def test_keras_file_converts_without_user_code_and_imports_by_role(tmp_path):
    model, roles = trained(keras)
    model.save(tmp_path / "run.keras")
    out = convert(tmp_path / "run.keras", tmp_path / "run.optstate")
    meta = osf.read(out).metadata
    assert meta["converted.from"] == "run.keras" and meta["converted.kind"] == "keras"
    assert_reaches_rebuilt_keras3_model_by_role(model, roles, out)


@pytest.mark.parametrize("family", ["new", "legacy"])
def test_tf_keras_h5_converts_and_reaches_a_rebuilt_keras3_model_by_role(family, tmp_path):
    opts = tf_keras.optimizers.legacy if family == "legacy" else tf_keras.optimizers
    model, roles = trained(tf_keras, opts.Adam(0.01))
    model.save(tmp_path / "run.h5")
    out = convert(tmp_path / "run.h5", tmp_path / "run.optstate")
    assert osf.read(out).producer["framework"] == "tf_keras"
    assert_reaches_rebuilt_keras3_model_by_role(model, roles, out)


def test_weights_h5_and_tf_checkpoint_need_the_model_that_wrote_them(tmp_path):
    model, roles = trained(keras)
    model.save_weights(tmp_path / "run.weights.h5")
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "run.weights.h5", tmp_path / "x.optstate")
    assert e.value.code == "E_CONVERT_MODEL"
    out = convert(tmp_path / "run.weights.h5", tmp_path / "w.optstate", model=branchy(keras)[0])
    assert_reaches_rebuilt_keras3_model_by_role(model, roles, out)

    legacy, lroles = trained(tf_keras, tf_keras.optimizers.legacy.Adam(0.01))
    tf.train.Checkpoint(model=legacy, optimizer=legacy.optimizer).save(tmp_path / "ck" / "c")
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "ck", tmp_path / "x.optstate")
    assert e.value.code == "E_CONVERT_MODEL"
    writer, _ = branchy(tf_keras, optimizer=tf_keras.optimizers.legacy.Adam(0.01))
    out = convert(tmp_path / "ck", tmp_path / "c.optstate", model=writer)
    assert_reaches_rebuilt_keras3_model_by_role(legacy, lroles, out)
    # a model that did not write it: refused, whatever it was loaded with
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.compile(keras.optimizers.Adam(), "mse")
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "ck", tmp_path / "y.optstate", model=other)
    assert e.value.code == "E_CONVERT_MODEL" and not (tmp_path / "y.optstate").exists()


def test_a_file_without_optimizer_state_is_refused_by_name(tmp_path):
    fresh = branchy(keras)[0]  # compiled, never trained: Keras saves no optimizer variables
    fresh.save(tmp_path / "fresh.keras")
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "fresh.keras", tmp_path / "x.optstate")
    assert e.value.code == "E_CONVERT_OPTIMIZER"
    m2, _ = trained(tf_keras, tf_keras.optimizers.Adam(0.01))
    m2.save(tmp_path / "noopt.h5", include_optimizer=False)
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "noopt.h5", tmp_path / "x.optstate")
    assert e.value.code == "E_CONVERT_OPTIMIZER" and "noopt.h5" in str(e.value)
    assert not (tmp_path / "x.optstate").exists()


def test_keras_skipping_the_optimizer_is_caught_not_written(tmp_path):
    # A .keras file whose optimizer arrays were removed: Keras only warns and loads a fresh
    # optimizer; convert compares with the file and refuses.
    model, _ = trained(keras)
    model.save(tmp_path / "run.keras")
    import h5py
    with zipfile.ZipFile(tmp_path / "run.keras") as z:
        z.extractall(tmp_path / "x")
    with h5py.File(tmp_path / "x" / "model.weights.h5", "a") as f:
        del f["optimizer"]["vars"]["3"]
    with zipfile.ZipFile(tmp_path / "cut.keras", "w") as z:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            z.write(tmp_path / "x" / name, name)
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "cut.keras", tmp_path / "cut.optstate")
    assert e.value.code == "E_CONVERT_OPTIMIZER"
    assert not (tmp_path / "cut.optstate").exists()


def test_code_and_foreign_classes_in_a_file_are_refused_by_name(tmp_path):
    ipt = keras.Input((3,))
    out = keras.layers.Dense(1)(keras.layers.Lambda(lambda t: t * 2, name="doubler")(ipt))
    model = keras.Model(ipt, out)
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 1)), verbose=0)
    model.save(tmp_path / "lam.keras")
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "lam.keras", tmp_path / "x.optstate")
    assert e.value.code == "E_UNSUPPORTED" and "'doubler'" in str(e.value)

    # a class from a user module named in the config: never imported
    good, _ = trained(keras)
    good.save(tmp_path / "run.keras")
    with zipfile.ZipFile(tmp_path / "run.keras") as z:
        files = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(files["config.json"])
    cfg["config"]["layers"][1]["module"] = "evil_module"
    files["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(tmp_path / "evil.keras", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    sys.modules.pop("evil_module", None)
    with pytest.raises(osf.UnsupportedError) as e:
        convert(tmp_path / "evil.keras", tmp_path / "x.optstate")
    assert "'evil_module'" in str(e.value) and "custom_objects" in str(e.value)
    assert "evil_module" not in sys.modules


@pytest.mark.parametrize("content,code", [(b"# README\nnot a model\n", "E_CONVERT_SOURCE"),
                                          (b"PK\x03\x04garbage", "E_CONVERT_SOURCE")])
def test_sources_convert_cannot_read_are_refused(content, code, tmp_path):
    (tmp_path / "src").write_bytes(content)
    with pytest.raises(osf.FormatError) as e:
        convert(tmp_path / "src", tmp_path / "x.optstate")
    assert e.value.code == code
    with pytest.raises(osf.FormatError) as e:
        convert(tmp_path / "missing.keras", tmp_path / "x.optstate")
    assert e.value.code == "E_CONVERT_SOURCE"


def test_cli_convert_and_version_print_no_tensorflow_noise(tmp_path):
    model, roles = trained(keras)
    model.save(tmp_path / "run.keras")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    cli = [sys.executable, "-m", "optstate_format.cli"]
    res = subprocess.run(cli + ["convert", str(tmp_path / "run.keras"), "-o",
                                str(tmp_path / "run.optstate")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr  # no TensorFlow start-up lines, no progress bar
    assert "run.optstate" in res.stdout
    assert_reaches_rebuilt_keras3_model_by_role(model, roles, tmp_path / "run.optstate")
    res = subprocess.run(cli + ["convert", str(tmp_path / "run.keras.nope"), "-o",
                                str(tmp_path / "x.optstate")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2 and "E_CONVERT_SOURCE" in res.stderr
    assert "cudart" not in res.stderr and "absl" not in res.stderr
    res = subprocess.run(cli + ["--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"optstate {osf.__version__} " \
        f"(format {osf.FORMAT_VERSION})"
