"""``optstate demo``: the seed report's case, end to end (needs the keras extra).

Installed as ``optstate_format.converters.demo``: it needs Keras, so it lives
with the converters, not in the framework-free core.

Model A reads 240 timesteps; model B, rebuilt for 250, gets a ZeroPadding1D in
one branch, which reorders its layers. Keras's order-based optimizer loading
fails on that pair; optstate imports every slot onto the weight with the same
role, and the demo checks that array by array.
"""

from __future__ import annotations

import os
from pathlib import Path


def seed_model(batch_shape, keras):
    """The seed report's model (its code, ported to Keras 3)."""
    layers = keras.layers
    ipt = keras.Input(batch_shape=batch_shape)
    roles = {"branch 1 conv": layers.Conv1D(16, 20, strides=200, padding="same"),
             "branch 1 bn": layers.BatchNormalization(),
             "branch 2 conv": layers.Conv1D(16, 200, strides=120, padding="same"),
             "branch 2 bn": layers.BatchNormalization(), "head": layers.Dense(1)}
    x1 = roles["branch 1 bn"](roles["branch 1 conv"](ipt))
    x2 = roles["branch 2 bn"](roles["branch 2 conv"](ipt))
    diff = int(x2.shape[1]) - int(x1.shape[1])
    if diff > 0:
        x1 = layers.ZeroPadding1D((diff, 0))(x1)
    elif diff < 0:
        x2 = layers.ZeroPadding1D((abs(diff), 0))(x2)
    preout = layers.concatenate([x1, x2])
    preout = layers.GlobalAveragePooling1D()(preout)
    out = roles["head"](preout)
    model = keras.Model(ipt, out)
    model.compile("adam", "mse")
    return model, roles


def run(out_dir="demo-out") -> int:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import optstate_format as osf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print("== 1. Train model A (240 timesteps) for 3 steps")
    model_a, roles_a = seed_model((32, 240, 4), keras)
    for _ in range(3):
        model_a.train_on_batch(rng.standard_normal((32, 240, 4)),
                               rng.integers(0, 2, (32, 1)).astype("float32"))
    print("   layers:", [layer.name for layer in model_a.layers])
    print("== 2. Rebuild as model B (250 timesteps): a ZeroPadding1D lands in one branch")
    model_b, _ = seed_model((32, 250, 4), keras)
    model_b.optimizer.build(model_b.trainable_variables)
    print("   layers:", [layer.name for layer in model_b.layers])

    print("== 3. Keras's own order-based path: optimizer variables, list to list")

    class Store(dict):
        pass

    store = Store()
    model_a.optimizer.save_own_variables(store)
    try:
        model_b.optimizer.load_own_variables(store)
        print("   Keras loaded it without complaint (slots may be on the wrong weights)")
    except Exception as e:  # noqa: BLE001 - showing the native failure is the point
        print(f"   Keras failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    model_b, roles_b = seed_model((32, 250, 4), keras)  # a fresh B: nothing half-loaded

    print("== 4. optstate: export A, import into B by role")
    path = osf.export_state(model_a, out / "model_a.optstate")
    report = osf.import_state(model_b, path)
    print(report)

    print("== 5. Check every slot of B against A's slot for the weight with the same role")
    # The oracle is the layer objects each builder put in each role, and Keras's own
    # variable -> slot index: nothing from optstate's identity algorithm.
    checked = 0
    for role, layer_a in roles_a.items():
        layer_b = roles_b[role]
        for va, vb in zip(layer_a.trainable_weights, layer_b.trainable_weights):
            ia = model_a.optimizer._get_variable_index(va)
            ib = model_b.optimizer._get_variable_index(vb)
            for attr in ("_momentums", "_velocities"):
                sa = np.asarray(getattr(model_a.optimizer, attr)[ia].numpy())
                sb = np.asarray(getattr(model_b.optimizer, attr)[ib].numpy())
                if not np.array_equal(sa, sb):
                    print(f"   MISMATCH: {role} {va.name} {attr}")
                    return 1
                checked += 1
    print(f"   {checked} slot arrays equal to their role's source; iterations = "
          f"{int(model_b.optimizer.iterations.numpy())}")
    print("== 6. The file")
    state = osf.read(path)
    print(f"   {path}: optstate {state.version}, {state.optimizer.class_name} (algorithm "
          f"{state.optimizer.algorithm}), step {state.step}, {len(state.weights)} weights, "
          f"{sum(len(w.slots) for w in state.weights)} slots")
    print(f"   {osf.check(path)}")
    print(f"   (optstate inspect {path} prints every weight and slot)")
    return 0
