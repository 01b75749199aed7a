"""tf_keras (Keras 2) converter, both optimizer families, and moving a run into Keras 3."""

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")
keras = pytest.importorskip("keras")

import optstate_format as osf  # noqa: E402
from optstate_format.converters._keras_tables import KERAS3, TF_KERAS, TF_KERAS_LEGACY  # noqa: E402,E501

from keras_models import two_branch as k3_two_branch  # noqa: E402

pytestmark = pytest.mark.framework
K = tf_keras
L = tf_keras.layers


def seed_model(batch_shape, opt):
    """The seed report's code, verbatim in substance, on tf_keras."""
    ipt = L.Input(batch_shape=batch_shape)
    conv_a = L.Conv1D(16, 20, strides=200, padding="same")
    bn_a = L.BatchNormalization()
    conv_b = L.Conv1D(16, 200, strides=120, padding="same")
    bn_b = L.BatchNormalization()
    x1, x2 = bn_a(conv_a(ipt)), bn_b(conv_b(ipt))
    diff = int(x2.shape[1]) - int(x1.shape[1])
    if diff > 0:
        x1 = L.ZeroPadding1D((diff, 0))(x1)
    elif diff < 0:
        x2 = L.ZeroPadding1D((abs(diff), 0))(x2)
    dense = L.Dense(1)
    out = dense(L.GlobalAveragePooling1D()(L.concatenate([x1, x2])))
    model = K.Model(ipt, out)
    model.compile(opt, "mse")
    return model, {"conv_a": conv_a, "bn_a": bn_a, "conv_b": conv_b, "bn_b": bn_b,
                   "dense": dense}


def two_branch(opt, insert=False, branch="b", b_first=False, head_units=1):
    ipt = K.Input((6,))
    roles, outs = {}, {}
    for br in (["b", "a"] if b_first else ["a", "b"]):
        d1, d2 = L.Dense(8), L.Dense(8)
        x = d1(ipt)
        if insert and br == branch:
            x = L.Activation("relu")(x)
        outs[br] = d2(x)
        roles[f"{br}1"], roles[f"{br}2"] = d1, d2
    head = L.Dense(head_units)
    roles["head"] = head
    model = K.Model(ipt, head(L.concatenate([outs["a"], outs["b"]])))
    model.compile(opt, "mse")
    return model, roles


def small_model(opt):
    ipt = K.Input((8, 3))
    out = L.Dense(2)(L.Flatten()(L.BatchNormalization()(L.Conv1D(4, 3)(ipt))))
    model = K.Model(ipt, out)
    model.compile(opt, "mse")
    return model


def train(model, steps=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(model.inputs[0].shape)
    batch = shape[0] or 8
    for _ in range(steps):
        x = rng.standard_normal((batch,) + tuple(shape[1:])).astype("float32")
        y = rng.standard_normal((batch,) + tuple(model.outputs[0].shape[1:])).astype("float32")
        model.train_on_batch(x, y)


def slot(model, var, canonical):
    """The framework's own lookup of a slot (the oracle), by canonical slot name."""
    opt = model.optimizer
    alg = "adam"
    if isinstance(opt, K.optimizers.legacy.Optimizer):
        legacy = TF_KERAS_LEGACY.framework_name(alg, canonical)
        return np.array(opt.get_slot(var, legacy).numpy())
    if isinstance(model, keras.Model):
        attr = KERAS3.framework_name(alg, canonical)
        return np.array(getattr(opt, attr)[opt._get_variable_index(var)].numpy())
    attr = TF_KERAS.framework_name(alg, canonical)
    return np.array(getattr(opt, attr)[opt._index_dict[opt._var_key(var)]].numpy())


def assert_roles(src, rs, dst, rd, slots=("m", "v")):
    n = 0
    for role in rs:
        for va, vb in zip(rs[role].trainable_weights, rd[role].trainable_weights):
            for s in slots:
                np.testing.assert_array_equal(slot(dst, vb, s), slot(src, va, s),
                                              err_msg=f"{role} {va.name} {s}")
                n += 1
    return n


def test_seed_original_code_fails_with_set_weights_and_ours_succeeds(tmp_path):
    a, ra = seed_model((32, 240, 4), K.optimizers.legacy.Adam())
    b, rb = seed_model((32, 250, 4), K.optimizers.legacy.Adam())
    train(a, 2)
    train(b, 1, seed=3)
    with pytest.raises(ValueError, match="shape"):
        b.optimizer.set_weights(a.optimizer.get_weights())
    path = osf.export_state(a, tmp_path / "a.optstate")
    report = osf.import_state(b, path)
    assert report.ok and assert_roles(a, ra, b, rb) == 20
    assert int(b.optimizer.iterations.numpy()) == 2


def test_equal_shapes_set_weights_swaps_silently_ours_lands_on_roles(tmp_path):
    a, ra = two_branch(K.optimizers.legacy.Adam())
    train(a, 2)
    native, rn = two_branch(K.optimizers.legacy.Adam(), insert=True)
    train(native, 1, seed=5)
    native.optimizer.set_weights(a.optimizer.get_weights())  # no error...
    assert not np.array_equal(slot(native, rn["a1"].kernel, "m"), slot(a, ra["a1"].kernel, "m"))
    np.testing.assert_array_equal(slot(native, rn["a1"].kernel, "m"),
                                  slot(a, ra["b1"].kernel, "m"))  # ...b1's moments on a1
    b, rb = two_branch(K.optimizers.legacy.Adam(), insert=True)
    osf.import_state(b, osf.export_state(a, tmp_path / "a.optstate"))
    assert assert_roles(a, ra, b, rb) == 20


def test_legacy_import_creates_slots_without_a_step_or_weight_change(tmp_path):
    a, ra = two_branch(K.optimizers.legacy.Adam())
    train(a, 3)
    path = osf.export_state(a, tmp_path / "a.optstate")
    b, rb = two_branch(K.optimizers.legacy.Adam(), insert=True, b_first=True)
    before = [w.copy() for w in b.get_weights()]
    assert not b.optimizer.weights
    osf.import_state(b, path)
    for x, y in zip(before, b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert int(b.optimizer.iterations.numpy()) == 3
    assert_roles(a, ra, b, rb)


@pytest.mark.parametrize("family", ["legacy", "new"])
def test_tf_keras_run_moves_into_keras3_built_in_another_order(family, tmp_path):
    opt = K.optimizers.legacy.Adam(0.01) if family == "legacy" else K.optimizers.Adam(0.01)
    a, ra = two_branch(opt)
    train(a, 4)
    path = osf.export_state(a, tmp_path / "k2.optstate", include_weights=True)
    b, rb = k3_two_branch(insert_activation=True, b_first=True, branch="b",
                          optimizer=keras.optimizers.Adam(0.01))
    report = osf.import_state(b, path, include_weights=True)
    assert report.ok
    assert assert_roles(a, ra, b, rb) == 20
    assert int(b.optimizer.iterations.numpy()) == 4
    for role in ra:
        for x, y in zip(ra[role].get_weights(), rb[role].get_weights()):
            np.testing.assert_array_equal(x, y)


def test_keras3_run_moves_back_into_tf_keras(tmp_path):
    a, ra = k3_two_branch(optimizer=keras.optimizers.Adam(0.01))
    rng = np.random.default_rng(0)
    a.train_on_batch(rng.standard_normal((8, 6)), rng.standard_normal((8, 1)))
    path = osf.export_state(a, tmp_path / "k3.optstate")
    b, rb = two_branch(K.optimizers.legacy.Adam(0.01), insert=True, b_first=True)
    assert osf.import_state(b, path).ok
    assert assert_roles(a, ra, b, rb) == 20


def test_legacy_time_decay_cannot_move_into_keras3(tmp_path):
    a, _ = two_branch(K.optimizers.legacy.Adam(0.01, decay=0.1))
    train(a, 1)
    path = osf.export_state(a, tmp_path / "d.optstate")
    b, _ = k3_two_branch(optimizer=keras.optimizers.Adam(0.01))
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path)
    assert "E_MATCH_HYPER" in str(e.value) and "decay" in str(e.value)


def _legacy():
    O = K.optimizers.legacy
    return {
        "legacy_sgd": lambda: O.SGD(0.01),
        "legacy_sgd_nesterov": lambda: O.SGD(0.01, momentum=0.9, nesterov=True),
        "legacy_rmsprop_centered": lambda: O.RMSprop(0.01, momentum=0.5, centered=True),
        "legacy_adam": lambda: O.Adam(0.01),
        "legacy_adam_amsgrad": lambda: O.Adam(0.01, amsgrad=True),
        "legacy_adadelta": lambda: O.Adadelta(0.5),
        "legacy_adagrad": lambda: O.Adagrad(0.05),
        "legacy_adamax": lambda: O.Adamax(0.01),
        "legacy_nadam": lambda: O.Nadam(0.01),
        "legacy_ftrl": lambda: O.Ftrl(0.05),
        "legacy_loss_scale_adam": lambda: K.mixed_precision.LossScaleOptimizer(O.Adam(0.01)),
    }


def _new():
    O = K.optimizers
    return {
        "sgd": lambda: O.SGD(0.01, momentum=0.9, nesterov=True),
        "rmsprop_centered": lambda: O.RMSprop(0.01, momentum=0.5, centered=True),
        "adam_amsgrad": lambda: O.Adam(0.01, amsgrad=True),
        "adamw": lambda: O.AdamW(0.01),
        "adadelta": lambda: O.Adadelta(0.5),
        "adagrad": lambda: O.Adagrad(0.05),
        "adamax": lambda: O.Adamax(0.01),
        "adafactor": lambda: O.Adafactor(0.01),
        "nadam": lambda: O.Nadam(0.01),
        "ftrl": lambda: O.Ftrl(0.05),
        "lion": lambda: O.Lion(0.001),
        "loss_scale_adam": lambda: K.mixed_precision.LossScaleOptimizer(O.Adam(0.01)),
    }


OPTS = {**_legacy(), **_new()}


def _opt_values(model):
    vs = model.optimizer.variables
    vs = vs() if callable(vs) else vs
    return [np.array(v.numpy()) for v in vs]


@pytest.mark.parametrize("name", sorted(OPTS))
def test_each_optimizer_of_both_families_roundtrips_with_an_identical_next_step(name,
                                                                               tmp_path):
    tf_keras.utils.set_random_seed(3)
    a = small_model(OPTS[name]())
    train(a, 3)
    path = osf.export_state(a, tmp_path / f"{name}.optstate")
    b = small_model(OPTS[name]())
    b.set_weights(a.get_weights())
    assert osf.import_state(b, path).ok
    va, vb = _opt_values(a), _opt_values(b)
    assert len(va) == len(vb) and va
    for x, y in zip(va, vb):
        np.testing.assert_array_equal(x, y)
    train(a, 1, seed=11)
    train(b, 1, seed=11)
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert osf.read(path).step == 3


class TfEncoder(L.Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = L.Dense(4)
        self.gate = L.Dense(4)

    def call(self, x):
        return self.proj(x) * tf_keras.activations.sigmoid(self.gate(x))


class TfSubclassed(K.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.encoder = TfEncoder()
        self.head = L.Dense(1)

    def call(self, x):
        return self.head(self.encoder(x))


def test_sequential_nested_subclassed_and_shared_layer_models_roundtrip(tmp_path):
    def sequential():
        m = K.Sequential([K.Input((5,)), L.Dense(4), L.Dropout(0.0), L.Dense(1)])
        m.compile(K.optimizers.legacy.RMSprop(0.01), "mse")
        return m

    def nested():
        inner = K.Sequential([K.Input((5,)), L.Dense(4), L.Activation("tanh"), L.Dense(3)])
        ipt = K.Input((5,))
        m = K.Model(ipt, L.Dense(1)(inner(ipt)))
        m.compile(K.optimizers.Adam(0.01), "mse")
        return m

    def subclassed():
        m = TfSubclassed()
        m.compile(K.optimizers.legacy.Adam(0.01), "mse")
        m(np.zeros((2, 5), "float32"))
        return m

    def shared():
        ipt_a, ipt_b = K.Input((5,)), K.Input((5,))
        enc = L.Dense(4)
        out = L.Dense(1)(L.concatenate([enc(ipt_a), enc(L.Activation("relu")(ipt_b))]))
        m = K.Model([ipt_a, ipt_b], out)
        m.compile(K.optimizers.legacy.Adam(0.01), "mse")
        return m

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype("float32")
    y = rng.standard_normal((8, 1)).astype("float32")
    for build in (sequential, nested, subclassed, shared):
        xs = [x, x[::-1].copy()] if build is shared else x
        a = build()
        a.train_on_batch(xs, y)
        path = osf.export_state(a, tmp_path / f"{build.__name__}.optstate")
        b = build()
        b.set_weights(a.get_weights())
        assert osf.import_state(b, path).ok, build.__name__
        for p, q in zip(_opt_values(a), _opt_values(b)):
            np.testing.assert_array_equal(p, q)
        a.train_on_batch(xs, y)
        b.train_on_batch(xs, y)
        for p, q in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(p, q)
    paths = sorted(w.path for w in osf.read(tmp_path / "subclassed.optstate").weights)
    assert paths == ["encoder/gate/bias", "encoder/gate/kernel", "encoder/proj/bias",
                     "encoder/proj/kernel", "head/bias", "head/kernel"]


def test_subclassed_model_moves_between_generations_by_attribute_path(tmp_path):
    from keras_models import Subclassed
    a = TfSubclassed()
    a.compile(K.optimizers.legacy.Adam(0.01), "mse")
    rng = np.random.default_rng(1)
    a.train_on_batch(rng.standard_normal((8, 5)).astype("float32"),
                     rng.standard_normal((8, 1)).astype("float32"))
    path = osf.export_state(a, tmp_path / "sub.optstate")
    b = Subclassed()
    b.compile(keras.optimizers.Adam(0.01), "mse")
    b(np.zeros((2, 5), "float32"))
    assert osf.import_state(b, path).ok
    pairs = [(a.encoder.proj, b.encoder.proj), (a.encoder.gate, b.encoder.gate),
             (a.head, b.head)]
    for la, lb in pairs:
        for va, vb in zip(la.trainable_weights, lb.trainable_weights):
            for s in ("m", "v"):
                np.testing.assert_array_equal(slot(b, vb, s), slot(a, va, s))


def _pair(opt2, opt3):
    ipt = K.Input((6,))
    a = K.Model(ipt, L.Dense(3)(L.Dense(4)(ipt)))
    a.compile(opt2, "mse")
    ipt3 = keras.Input((6,))
    b = keras.Model(ipt3, keras.layers.Dense(3)(keras.layers.Dense(4)(ipt3)))
    b.compile(opt3, "mse")
    return a, b


CROSS = {
    "legacy_adam": (lambda: K.optimizers.legacy.Adam(0.01), lambda: keras.optimizers.Adam(0.01)),
    "legacy_sgd_nesterov": (lambda: K.optimizers.legacy.SGD(0.01, momentum=0.9, nesterov=True),
                            lambda: keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)),
    "legacy_rmsprop_centered": (
        lambda: K.optimizers.legacy.RMSprop(0.01, momentum=0.5, centered=True),
        lambda: keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True)),
    "legacy_adagrad": (lambda: K.optimizers.legacy.Adagrad(0.05),
                       lambda: keras.optimizers.Adagrad(0.05)),
    "legacy_adadelta": (lambda: K.optimizers.legacy.Adadelta(0.5),
                        lambda: keras.optimizers.Adadelta(0.5)),
    "legacy_adamax": (lambda: K.optimizers.legacy.Adamax(0.01),
                      lambda: keras.optimizers.Adamax(0.01)),
    "legacy_ftrl": (lambda: K.optimizers.legacy.Ftrl(0.05), lambda: keras.optimizers.Ftrl(0.05)),
    "new_nadam": (lambda: K.optimizers.Nadam(0.01), lambda: keras.optimizers.Nadam(0.01)),
    "new_adafactor": (lambda: K.optimizers.Adafactor(0.01),
                      lambda: keras.optimizers.Adafactor(0.01)),
    "new_lion": (lambda: K.optimizers.Lion(0.001), lambda: keras.optimizers.Lion(0.001)),
    "new_adamw": (lambda: K.optimizers.AdamW(0.01), lambda: keras.optimizers.AdamW(0.01)),
}


@pytest.mark.parametrize("name", sorted(CROSS))
def test_keras2_state_continues_in_keras3(name, tmp_path):
    """Slots and weights move exactly; the next step agrees to float rounding (the two
    generations compute the same update with different kernels)."""
    a, b = _pair(CROSS[name][0](), CROSS[name][1]())
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 6)).astype("float32"),
                rng.standard_normal((8, 3)).astype("float32")) for _ in range(4)]
    for x, y in batches[:3]:
        a.train_on_batch(x, y)
    path = osf.export_state(a, tmp_path / f"{name}.optstate", include_weights=True)
    assert osf.import_state(b, path, include_weights=True).ok
    state = osf.read(path)
    for w in state.weights:
        for slot_name, arr in w.slots.items():
            assert np.isfinite(arr).all()
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)
    assert int(b.optimizer.iterations.numpy()) == 3
    before = [w.copy() for w in b.get_weights()]
    a.train_on_batch(*batches[3])
    b.train_on_batch(*batches[3])
    for x, y, w0 in zip(a.get_weights(), b.get_weights(), before):
        step = np.max(np.abs(x - w0))
        assert step > 0
        np.testing.assert_allclose(y, x, rtol=0, atol=max(1e-6, 1e-3 * step))


def test_legacy_nadam_is_refused_by_keras3_naming_the_schedule_difference(tmp_path):
    a, b = _pair(K.optimizers.legacy.Nadam(0.01), keras.optimizers.Nadam(0.01))
    train(a, 2)
    path = osf.export_state(a, tmp_path / "n.optstate")
    before = [np.array(v.numpy()) for v in b.optimizer.variables] if b.optimizer.built else []
    with pytest.raises(osf.MatchError) as e:
        osf.import_state(b, path)
    assert "nadam_legacy" in str(e.value) and "0.96^(schedule_decay * t)" in str(e.value)
    for x, v in zip(before, b.optimizer.variables):
        np.testing.assert_array_equal(x, v.numpy())
