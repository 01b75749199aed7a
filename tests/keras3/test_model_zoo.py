"""Other model shapes, in both generations: recurrent, attention, convolutional residual,
multi-input/output, a subclassed model inside a functional one. Each gets an extra
parameterless layer in the rebuilt model, must import by role and continue identically, and
must move from tf_keras into Keras 3."""

import numpy as np
import pytest

keras3 = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

import optstate_format as osf  # noqa: E402

pytestmark = pytest.mark.framework


def lstm(K, extra):
    L = K.layers
    i = K.Input((5, 3))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True))(i)
    if extra:
        x = L.Dropout(0.0)(x)
    return K.Model(i, L.Dense(1)(L.GRU(3)(x)))


def attention(K, extra):
    L = K.layers
    i = K.Input((6,), dtype="int32")
    e = L.Embedding(10, 8)(i)
    a = L.MultiHeadAttention(2, 4)(e, e)
    if extra:
        a = L.Activation("linear")(a)
    x = L.LayerNormalization()(L.Add()([e, a]))
    return K.Model(i, L.Dense(2)(L.GlobalAveragePooling1D()(x)))


def conv_residual(K, extra):
    L = K.layers
    i = K.Input((8, 8, 3))
    x = L.Conv2D(4, 3, padding="same")(i)
    y = L.BatchNormalization()(x)
    if extra:
        y = L.Activation("linear")(y)
    y = L.Conv2D(4, 3, padding="same")(y)
    x = L.SeparableConv2D(2, 3)(L.Add()([x, y]))
    return K.Model(i, L.Dense(1)(L.Flatten()(x)))


def multi_io(K, extra):
    L = K.layers
    a, b = K.Input((4,), name="a"), K.Input((3,), name="b")
    h = L.Dense(5)(L.concatenate([a, b]))
    if extra:
        h = L.Dropout(0.0)(h)
    return K.Model([a, b], [L.Dense(1)(h), L.Dense(2)(h)])


def subclassed_inside(K, extra):
    L = K.layers

    class Block(K.Model):
        def __init__(self):
            super().__init__()
            self.stack = [L.Dense(4), L.Dense(4)]
            self.norm = L.LayerNormalization()

        def call(self, x):
            for layer in self.stack:
                x = layer(x)
            return self.norm(x)

    i = K.Input((4,))
    x = Block()(i)
    if extra:
        x = L.Activation("linear")(x)
    return K.Model(i, L.Dense(1)(x))


BUILDERS = [lstm, attention, conv_residual, multi_io, subclassed_inside]


def batch(model, seed=0):
    rng = np.random.default_rng(seed)

    def make(t):
        shape = (4,) + tuple(t.shape[1:])
        if "int" in str(t.dtype):
            return rng.integers(0, 10, shape)
        return rng.standard_normal(shape).astype("float32")

    x = [make(t) for t in model.inputs]
    y = [rng.standard_normal((4,) + tuple(t.shape[1:])).astype("float32")
         for t in model.outputs]
    return (x if len(x) > 1 else x[0]), (y if len(y) > 1 else y[0])


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda f: f.__name__)
def test_rebuilt_with_an_extra_layer_imports_and_continues_identically(builder, framework,
                                                                      tmp_path):
    K = keras3 if framework == "keras3" else tf_keras
    a = builder(K, False)
    a.compile("adam", "mse")
    x, y = batch(a)
    a.train_on_batch(x, y)
    path = osf.export_state(a, tmp_path / "m.optstate", include_weights=True)
    b = builder(K, True)
    b.compile("adam", "mse")
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok and len(report.matched) == len(osf.read(path).weights)
    x2, y2 = batch(a, seed=1)
    a.train_on_batch(x2, y2)
    b.train_on_batch(x2, y2)
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for p, q in zip(sorted(wa, key=lambda w: (w.shape, float(w.sum()))),
                    sorted(wb, key=lambda w: (w.shape, float(w.sum())))):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda f: f.__name__)
def test_tf_keras_model_state_moves_into_keras3(builder, tmp_path):
    a = builder(tf_keras, False)
    a.compile(tf_keras.optimizers.legacy.Adam(), "mse")
    a.train_on_batch(*batch(a))
    path = osf.export_state(a, tmp_path / "k2.optstate", include_weights=True)
    b = builder(keras3, True)
    b.compile("adam", "mse")
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok
    state = osf.read(path)
    opt = b.optimizer
    by_path = {}
    for w in osf.converters.keras3.describe_model(b).weights:
        by_path[w.path] = w.variable.handle
    checked = 0
    for fp, tp, _ in report.matched:
        entry, var = state.weight(fp), by_path[tp]
        np.testing.assert_array_equal(var.numpy(), entry.value)
        if entry.slots:
            i = opt._get_variable_index(var)
            np.testing.assert_array_equal(opt._momentums[i].numpy(), entry.slots["m"])
            np.testing.assert_array_equal(opt._velocities[i].numpy(), entry.slots["v"])
            checked += 1
    assert checked == sum(1 for w in state.weights if w.slots) > 0


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_mixed_precision_policy_roundtrips_loss_scale_state(framework, tmp_path):
    K = keras3 if framework == "keras3" else tf_keras
    K.mixed_precision.set_global_policy("mixed_float16")
    try:
        def build():
            i = K.Input((4,))
            out = K.layers.Dense(1, dtype="float32")(K.layers.Dense(8)(i))
            m = K.Model(i, out)
            m.compile("adam", "mse")
            return m

        a = build()
        x, y = batch(a)
        for _ in range(3):
            a.train_on_batch(x, y)
        path = osf.export_state(a, tmp_path / "mp.optstate")
        state = osf.read(path)
        assert state.optimizer.wrappers[0]["class_name"] == "LossScaleOptimizer"
        assert {"loss_scale.dynamic_scale", "loss_scale.step_counter"} <= set(state.globals)
        b = build()
        b.set_weights(a.get_weights())
        assert osf.import_state(b, path).ok
        a.train_on_batch(x, y)
        b.train_on_batch(x, y)
        for p, q in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(p, q)
    finally:
        K.mixed_precision.set_global_policy("float32")


# ---- the model zoo (issue 10, item 3): tests/zoo.py ---------------------------------------

import os  # noqa: E402

import zoo  # noqa: E402

FULL_ZOO = bool(os.environ.get("OPTSTATE_ZOO"))


def _zoo_params():
    out = []
    for name, family in zoo.cases():
        marks = [] if name in zoo.CI else [pytest.mark.skipif(
            not FULL_ZOO, reason="full zoo: `make zoo` (or OPTSTATE_ZOO=1 pytest -k zoo)")]
        out.append(pytest.param(name, family, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name,family", _zoo_params())
def test_zoo_model_rebuilt_elsewhere_gets_every_slot_on_its_layer(name, family, tmp_path):
    """Train a step, export, rebuild (other input size, counters moved), import; each Adam
    slot equals the source's for the weight at the same layer and index (tests/zoo.py)."""
    if family == "keras_hub":
        pytest.importorskip("keras_hub")
    row = zoo.run_case(name, family, tmp_path)
    assert row.status == "ok" and row.slots_checked == 2 * row.weights > 0


def test_convnext_layer_scale_weights_have_generated_names_and_import_by_role(tmp_path):
    """The issue's case: LayerScale's ``variable_<n>`` weights (36 refused problems in 1.0)."""
    model = keras3.applications.ConvNeXtTiny(weights=None, include_top=False,
                                             input_shape=(32, 32, 3), pooling="avg")
    from optstate_format import _api
    desc = _api.adapter_for(model).describe_model(model)
    ids = _api.identities(desc)
    gen = [w.path for w in desc.weights if w.generated_name]
    assert len(gen) == 18 and all("layer_scale" in p for p in gen)
    assert {ids[p].role for p in gen} == {"#0"}
