"""Test strength (issue 18) through real models: Keras 3 and tf_keras, small models only."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402

pytestmark = pytest.mark.framework


def dense_model(optimizer, *, normalization=False, lib=keras):
    """input (-> adapted Normalization) -> Dense(4) -> Dense(1); fitted once."""
    ipt = lib.Input((3,))
    x = ipt
    if normalization:
        norm = lib.layers.Normalization(name="norm")
        norm.adapt(np.arange(12, dtype="float32").reshape(4, 3))
        x = norm(x)
    out = lib.layers.Dense(1)(lib.layers.Dense(4)(x))
    model = lib.Model(ipt, out)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    model.train_on_batch(rng.standard_normal((4, 3)).astype("float32"),
                         rng.standard_normal((4, 1)).astype("float32"))
    return model


def optimizer_values(model):
    return [np.array(v.numpy()) for v in model.optimizer.variables]


def assert_refused_naming(model, path, code, needle, **kw):
    before = optimizer_values(model)
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(model, path, **kw)
    problems = e.value.problems
    assert {p.code for p in problems} == {code}
    assert all(needle in p.message for p in problems)
    after = optimizer_values(model)
    assert len(after) == len(before)
    assert all(np.array_equal(x, y) for x, y in zip(before, after))  # nothing assigned
    return problems


@pytest.mark.parametrize("src,dst,needle", [
    (dict(amsgrad=True), dict(), "file has slot 'v_hat'"),
    (dict(use_ema=True), dict(), "file has slot 'ema'"),
    (dict(), dict(amsgrad=True), "keeps slot 'v_hat'"),
])
def test_keras3_adam_slot_sets_differing_either_way_are_refused_naming_the_slot(
        src, dst, needle, tmp_path):
    path = osf.export_state(dense_model(keras.optimizers.Adam(0.01, **src)), tmp_path / "a")
    target = dense_model(keras.optimizers.Adam(0.01, **dst))
    problems = assert_refused_naming(target, path, "E_MATCH_SLOTS", needle)
    assert len(problems) == 4  # two kernels and two biases


def test_tf_keras_adam_with_amsgrad_into_plain_adam_is_refused_naming_the_slot(tmp_path):
    src = dense_model(tf_keras.optimizers.Adam(0.01, amsgrad=True), lib=tf_keras)
    path = osf.export_state(src, tmp_path / "a")
    target = dense_model(tf_keras.optimizers.Adam(0.01), lib=tf_keras)
    assert len(assert_refused_naming(target, path, "E_MATCH_SLOTS", "'v_hat'")) == 4


def test_include_weights_into_a_model_with_an_adapted_normalization_reports_it_missing(
        tmp_path):
    path = osf.export_state(dense_model("adam"), tmp_path / "a", include_weights=True)
    target = dense_model("adam", normalization=True)
    before = [np.array(w) for w in target.get_weights()]
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(target, path, include_weights=True)
    missing = sorted(p.path for p in e.value.problems if p.code == "E_MATCH_MISSING")
    assert missing == ["norm/count", "norm/mean", "norm/variance"]
    assert {p.code for p in e.value.problems} == {"E_MATCH_MISSING"}
    assert all(np.array_equal(a, b) for a, b in zip(before, target.get_weights()))
    # the optimizer state alone needs nothing from the Normalization: it imports
    report = osf.import_state(target, path)
    assert report.ok and len(report.matched) == 4


@pytest.mark.parametrize("legacy", [False, True])
def test_tf_keras_learning_rate_schedules_are_recorded_as_data(legacy):
    sched = tf_keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    family = tf_keras.optimizers.legacy if legacy else tf_keras.optimizers
    model = dense_model(family.Adam(sched), lib=tf_keras)
    lr = osf._api.source_state(model).optimizer.learning_rate
    assert lr["kind"] == "schedule" and lr["class_name"] == "ExponentialDecay"
    assert {k: lr["config"][k] for k in ("initial_learning_rate", "decay_steps", "decay_rate",
                                         "staircase")} == {
        "initial_learning_rate": 0.01, "decay_steps": 3, "decay_rate": 0.5, "staircase": False}


def split_model(b_first=False):
    """input -> Dense(6) -> keras.ops.split in two -> Dense(2) on each half -> concatenate."""
    ipt = keras.Input((3,))
    trunk = keras.layers.Dense(6)
    halves = keras.ops.split(trunk(ipt), 2, axis=-1)
    roles = {"trunk": trunk, "left": keras.layers.Dense(2), "right": keras.layers.Dense(2)}
    if b_first:  # build (and auto-name) the right branch first
        right = roles["right"](halves[1])
        left = roles["left"](halves[0])
    else:
        left = roles["left"](halves[0])
        right = roles["right"](halves[1])
    model = keras.Model(ipt, keras.layers.concatenate([left, right]))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    return model, roles


def test_keras_split_branches_get_different_identities_and_state_follows_the_role(tmp_path):
    a, ra = split_model()
    rng = np.random.default_rng(1)
    a.train_on_batch(rng.standard_normal((4, 3)).astype("float32"),
                     rng.standard_normal((4, 4)).astype("float32"))
    state = osf._api.source_state(a, materialize=True)
    by_layer = {w.path.split("/")[0]: w.hints["structural"] for w in state.weights
                if w.path.endswith("kernel")}
    ids = {role: by_layer[layer.name] for role, layer in ra.items()}
    assert len(set(ids.values())) == 3 and all(i.startswith("g:") for i in ids.values())
    path = osf.export_state(a, tmp_path / "split")
    b, rb = split_model(b_first=True)
    report = osf.import_state(b, path)
    assert report.ok and {m[2] for m in report.matched} == {"structure"}
    opt_a, opt_b = a.optimizer, b.optimizer
    for role in ra:
        for va, vb in zip(ra[role].trainable_weights, rb[role].trainable_weights):
            ia, ib = opt_a._get_variable_index(va), opt_b._get_variable_index(vb)
            for attr in ("_momentums", "_velocities"):
                np.testing.assert_array_equal(getattr(opt_b, attr)[ib].numpy(),
                                              getattr(opt_a, attr)[ia].numpy())
