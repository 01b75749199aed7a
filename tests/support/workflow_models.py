"""Models and data for the workflow tests, written once for Keras 3 and tf_keras.

``branchy(lib, changed=...)`` returns (model, roles). ``changed=True`` builds the same function
with the branches built in the other order and two parameterless layers inserted (a Dropout of
rate 0 in one branch, a ZeroPadding1D after a ReLU before a global max, which cannot change the
maximum), so the same training continues bit for bit while Keras's variable order, its
auto-generated names and the layer list all differ. ``roles`` maps a role to its layer: an
oracle independent of optstate's identity algorithm.
"""

import numpy as np


def branchy(lib, *, changed=False, optimizer=None, jit_compile=None):
    L = lib.layers
    ipt = L.Input((12, 3))
    roles = {}

    def conv_branch(x):
        conv = L.Conv1D(4, 3, activation="relu")
        roles["conv"] = conv
        y = conv(x)
        if changed:
            y = L.ZeroPadding1D(2)(y)  # zeros after a ReLU: the max below is unchanged
        return L.GlobalMaxPooling1D()(y)

    def dense_branch(x):
        dense = L.Dense(5, activation="tanh")
        roles["dense"] = dense
        y = L.Flatten()(x)
        if changed:
            y = L.Dropout(0.0)(y)
        return dense(y)

    if changed:
        yd = dense_branch(ipt)
        yc = conv_branch(ipt)
    else:
        yc = conv_branch(ipt)
        yd = dense_branch(ipt)
    head = L.Dense(2)
    roles["head"] = head
    out = head(L.concatenate([yc, yd]))
    model = lib.Model(ipt, out)
    opt = optimizer if optimizer is not None else lib.optimizers.Adam(0.01)
    kw = {} if jit_compile is None else {"jit_compile": jit_compile}
    model.compile(opt, "mse", **kw)
    return model, roles


def data(n=64):
    rng = np.random.default_rng(5)
    return (rng.standard_normal((n, 12, 3)).astype("float32"),
            rng.standard_normal((n, 2)).astype("float32"))


def weights_by_role(roles):
    return {f"{r}/{i}": np.array(w) for r, layer in roles.items()
            for i, w in enumerate(layer.get_weights())}


def adam_slots_by_role(model, roles):
    """{role/i/m|v: array} read from the framework's own optimizer attributes."""
    opt = model.optimizer
    out = {}
    for r, layer in roles.items():
        for i, var in enumerate(layer.trainable_weights):
            if hasattr(opt, "get_slot"):  # tf_keras legacy
                m, v = opt.get_slot(var, "m"), opt.get_slot(var, "v")
            elif hasattr(opt, "_index_dict"):  # tf_keras new optimizers
                k = opt._index_dict[opt._var_key(var)]
                m, v = opt._momentums[k], opt._velocities[k]
            else:  # Keras 3
                k = [id(t) for t in opt._trainable_variables].index(id(var))
                m, v = opt._momentums[k], opt._velocities[k]
            out[f"{r}/{i}/m"], out[f"{r}/{i}/v"] = np.array(m.numpy()), np.array(v.numpy())
    return out
