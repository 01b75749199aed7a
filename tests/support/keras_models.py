"""Model builders for the Keras 3 tests. Each returns (model, roles): roles maps a role name
to the layer playing it, an oracle independent of optstate's own identity algorithm."""

import keras
from keras import layers


def seed_model(batch_shape, optimizer="adam"):
    """The seed report's model; ZeroPadding1D lands in one branch depending on timesteps."""
    ipt = keras.Input(batch_shape=batch_shape)
    conv_a = layers.Conv1D(16, 20, strides=200, padding="same")
    bn_a = layers.BatchNormalization()
    conv_b = layers.Conv1D(16, 200, strides=120, padding="same")
    bn_b = layers.BatchNormalization()
    x1 = bn_a(conv_a(ipt))
    x2 = bn_b(conv_b(ipt))
    diff = int(x2.shape[1]) - int(x1.shape[1])
    if diff > 0:
        x1 = layers.ZeroPadding1D((diff, 0))(x1)
    elif diff < 0:
        x2 = layers.ZeroPadding1D((abs(diff), 0))(x2)
    dense = layers.Dense(1)
    out = dense(layers.GlobalAveragePooling1D()(layers.concatenate([x1, x2])))
    model = keras.Model(ipt, out)
    model.compile(optimizer, "mse")
    return model, {"conv_a": conv_a, "bn_a": bn_a, "conv_b": conv_b, "bn_b": bn_b,
                   "dense": dense}


def two_branch(insert_activation=False, b_first=False, units=8, optimizer="adam", branch="a",
               head_units=1):
    """Two branches of identical Dense stacks (equal shapes) merged by concatenation."""
    ipt = keras.Input((6,))
    roles = {}
    outs = {}
    order = ["b", "a"] if b_first else ["a", "b"]
    for br in order:
        d1, d2 = layers.Dense(units), layers.Dense(units)
        x = d1(ipt)
        if insert_activation and br == branch:
            x = layers.Activation("relu")(x)
        outs[br] = d2(x)
        roles[f"{br}1"], roles[f"{br}2"] = d1, d2
    head = layers.Dense(head_units)
    out = head(layers.concatenate([outs["a"], outs["b"]]))
    roles["head"] = head
    model = keras.Model(ipt, out)
    model.compile(optimizer, "mse")
    return model, roles


def small_model(optimizer):
    """Conv + BN + Dense: 3-D, 2-D and 1-D weights, trainable and not."""
    ipt = keras.Input((8, 3))
    conv = layers.Conv1D(4, 3)
    bn = layers.BatchNormalization()
    dense = layers.Dense(2)
    out = dense(layers.Flatten()(bn(conv(ipt))))
    model = keras.Model(ipt, out)
    model.compile(optimizer, "mse")
    return model, {"conv": conv, "bn": bn, "dense": dense}


class Encoder(keras.layers.Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = layers.Dense(4)
        self.gate = layers.Dense(4)

    def call(self, x):
        return self.proj(x) * keras.ops.sigmoid(self.gate(x))


class Subclassed(keras.Model):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.encoder = Encoder()
        self.head = layers.Dense(1)

    def call(self, x):
        return self.head(self.encoder(x))


def import_into_two_dense(archive, want):
    """A fresh Dense(16) -> Dense(4) model (input 8, Adam) imports ``archive`` with its
    weights in this process; every weight, m and v must equal ``want`` (keyed
    ``<path>|value``, ``|m``, ``|v``). Returns the model (the archive tests of several
    processes use it)."""
    import numpy as np

    import optstate_format as osf
    inp = keras.Input((8,), name="x")
    out = keras.layers.Dense(4, name="d2")(keras.layers.Dense(16, name="d1")(inp))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    report = osf.import_state(model, archive, include_weights=True)
    assert report.ok and len(report.matched) == 4
    opt = model.optimizer
    for var in model.trainable_variables:
        k = opt._get_variable_index(var)
        np.testing.assert_array_equal(np.asarray(var.numpy()), want[f"{var.path}|value"])
        np.testing.assert_array_equal(np.asarray(opt._momentums[k].numpy()),
                                      want[f"{var.path}|m"])
        np.testing.assert_array_equal(np.asarray(opt._velocities[k].numpy()),
                                      want[f"{var.path}|v"])
    return model
