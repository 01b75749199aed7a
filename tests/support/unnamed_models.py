"""Models whose user layer creates its weights without names (``add_weight(shape=...)``), for
Keras 3 and tf_keras alike (``K`` is the keras module). Each builder returns (model, roles):
roles maps a role name to the layer playing it, an oracle independent of optstate."""

import numpy as np

_CLASSES = {}


def scale_shift_class(K):
    """A user layer with two unnamed weights of equal shape: ``scale`` then ``shift``."""
    if K.__name__ not in _CLASSES:
        class ScaleShift(K.layers.Layer):
            def build(self, input_shape):
                n = int(input_shape[-1])
                self.scale = self.add_weight(shape=(n,), initializer="ones")
                self.shift = self.add_weight(shape=(n,), initializer="zeros")
                super().build(input_shape)

            def call(self, x):
                return x * self.scale + self.shift

        _CLASSES[K.__name__] = ScaleShift
    return _CLASSES[K.__name__]


def move_counters(K, n=3):
    """Build throwaway layers with unnamed weights (and Dense layers): every generated name
    (``variable_<n>``, ``dense_<n>``) of what is built next moves on."""
    for _ in range(n):
        layer = scale_shift_class(K)()
        layer.build((None, 5))
        K.layers.Dense(2).build((None, 3))


def branches(K, *, b_first=False, units=8, optimizer="adam", head_units=1, compile=True):
    """Input -> two branches (Dense, ScaleShift), concatenated in the order (a, b) -> Dense."""
    ipt = K.Input((6,))
    roles, outs = {}, {}
    for br in (["b", "a"] if b_first else ["a", "b"]):
        dense, ss = K.layers.Dense(units), scale_shift_class(K)()
        outs[br] = ss(dense(ipt))
        roles[f"{br}_dense"], roles[f"{br}_ss"] = dense, ss
    head = K.layers.Dense(head_units)
    roles["head"] = head
    model = K.Model(ipt, head(K.layers.concatenate([outs["a"], outs["b"]])))
    if compile:
        model.compile(optimizer, "mse")
    return model, roles


def subclassed(K, *, b_first=False, units=8, optimizer="adam"):
    """The same two branches as a subclassed model (attribute paths, no graph)."""
    SS = scale_shift_class(K)

    class TwoBranches(K.Model):
        def __init__(self):
            super().__init__()
            made = {}
            for br in (["b", "a"] if b_first else ["a", "b"]):
                made[br] = (K.layers.Dense(units), SS())
            self.branch_a, self.branch_b = list(made["a"]), list(made["b"])
            self.head = K.layers.Dense(1)

        def call(self, x):
            ya = self.branch_a[1](self.branch_a[0](x))
            yb = self.branch_b[1](self.branch_b[0](x))
            return self.head(K.layers.concatenate([ya, yb]))

    model = TwoBranches()
    model(np.zeros((1, 6), np.float32))
    model.compile(optimizer, "mse")
    roles = {"a_dense": model.branch_a[0], "a_ss": model.branch_a[1],
             "b_dense": model.branch_b[0], "b_ss": model.branch_b[1], "head": model.head}
    return model, roles


def role_weights(roles):
    """(role/attribute, variable) for every weight, named by role: ``a_ss/scale``..."""
    out = []
    for role, layer in sorted(roles.items()):
        if hasattr(layer, "scale"):
            out += [(f"{role}/scale", layer.scale), (f"{role}/shift", layer.shift)]
        else:
            out += [(f"{role}/kernel", layer.kernel), (f"{role}/bias", layer.bias)]
    return out


def train(model, seed=0, steps=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.train_on_batch(rng.standard_normal((8, 6)).astype("float32"),
                             rng.standard_normal((8, 1)).astype("float32"))


def role_code(name):
    """A distinct number for each role/attribute, to fill slots with recognizable values."""
    return float(sum((i + 1) * ord(c) for i, c in enumerate(name)) % 997)


def slot(opt, var, name):
    """The optimizer's slot ``name`` ("m" or "v", Adam) for ``var``, read without optstate."""
    inner = getattr(opt, "inner_optimizer", opt)
    if hasattr(inner, "get_slot") and hasattr(inner, "_slots"):  # tf_keras legacy
        return np.asarray(inner.get_slot(var, name).numpy())
    lists = {"m": inner._momentums, "v": inner._velocities}[name]
    if hasattr(inner, "_get_variable_index"):  # Keras 3
        return np.asarray(lists[inner._get_variable_index(var)].numpy())
    return np.asarray(lists[inner._index_dict[inner._var_key(var)]].numpy())  # tf_keras


def slot_var(opt, var, name):
    inner = getattr(opt, "inner_optimizer", opt)
    if hasattr(inner, "get_slot") and hasattr(inner, "_slots"):
        return inner.get_slot(var, name)
    lists = {"m": inner._momentums, "v": inner._velocities}[name]
    if hasattr(inner, "_get_variable_index"):
        return lists[inner._get_variable_index(var)]
    return lists[inner._index_dict[inner._var_key(var)]]


def fill_by_role(model, roles):
    """Set every weight and Adam slot to values that name its role (role_code)."""
    for name, var in role_weights(roles):
        n = int(np.prod(var.shape))
        base = np.arange(n, dtype=np.float32).reshape(tuple(var.shape)) * 0.01
        var.assign(base + role_code(name) + 0.5)
        slot_var(model.optimizer, var, "m").assign(base + role_code(name))
        slot_var(model.optimizer, var, "v").assign(base + role_code(name) + 0.25)


def assert_filled_by_role(model, roles, include_weights=False):
    """Every slot (and weight) of ``model`` holds the values fill_by_role gave its role."""
    checked = 0
    for name, var in role_weights(roles):
        n = int(np.prod(var.shape))
        base = np.arange(n, dtype=np.float32).reshape(tuple(var.shape)) * 0.01
        np.testing.assert_array_equal(slot(model.optimizer, var, "m"), base + role_code(name),
                                      err_msg=name)
        np.testing.assert_array_equal(slot(model.optimizer, var, "v"),
                                      base + role_code(name) + 0.25, err_msg=name)
        if include_weights:
            np.testing.assert_array_equal(np.asarray(var.numpy()),
                                          base + role_code(name) + 0.5, err_msg=name)
        checked += 2
    return checked
