"""Worker for the tf.distribute tests (test_archive_mwms.py): one of the workers of a
MultiWorkerMirroredStrategy job on localhost (CPU) that trains a small model and exports its
optimizer state into one sharded archive (spec 14.10).

usage: mwms_worker.py INDEX PORTS FLAVOR ARCHIVE OUTDIR

PORTS: the workers' ports, comma-separated; FLAVOR: ``keras3`` (Keras 3 on TensorFlow, a
custom step through ``strategy.run``) or ``tf_keras`` (Keras 2, ``fit``, a legacy Adam, a
BatchNormalization whose moving statistics are on-read variables). Steps, each printed:

1. train, then dump this worker's own values (weights, Adam's m and v, the step) read from
   the framework (never through optstate) to OUTDIR/worker<INDEX>.npz;
2. export the archive, outside ``strategy.scope()``; worker 0 records the folder's listing
   and the index's bytes (OUTDIR/after_first.json);
3. import the archive into a fresh model (optimizer not built: it is built outside the scope
   by the import) and compare every value with step 1's;
4. export again to the same path with a failure injected: worker 1 before it writes (its
   plan raises ENOSPC), then worker 0 after its first shard. Each prints the code it got.
"""

import errno
import hashlib
import json
import os
import sys

index, ports, flavor, archive, outdir = (int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3],
                                         sys.argv[4], sys.argv[5])
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"localhost:{p}" for p in ports]},
    "task": {"type": "worker", "index": index}})
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
if flavor == "tf_keras":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
else:
    os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import optstate_format as osf  # noqa: E402
from optstate_format import _archive  # noqa: E402

if flavor == "tf_keras":
    import tf_keras as K  # noqa: E402
else:
    import keras as K  # noqa: E402


def build():
    with strategy.scope():
        inp = K.Input((8,), name="x")
        h = K.layers.Dense(16, name="d1")(inp)
        if flavor == "tf_keras":
            h = K.layers.BatchNormalization(name="bn")(h)
        out = K.layers.Dense(4, name="d2")(h)
        model = K.Model(inp, out)
        opt = (K.optimizers.legacy.Adam(0.01) if flavor == "tf_keras"
               else K.optimizers.Adam(0.01))
        model.compile(optimizer=opt, loss="mse")
    return model


def values(model):
    """{name|what: array} read from the framework itself, not through optstate."""
    opt, out = model.optimizer, {}
    for var in model.trainable_variables:
        name = var.path if flavor == "keras3" else var.name
        if flavor == "keras3":
            k = opt._get_variable_index(var)
            slots = {"m": opt._momentums[k], "v": opt._velocities[k]}
        else:
            slots = {"m": opt.get_slot(var, "m"), "v": opt.get_slot(var, "v")}
        out[f"{name}|value"] = np.array(var.numpy())
        for s, v in slots.items():
            out[f"{name}|{s}"] = np.array(v.numpy())
    for var in model.non_trainable_variables:
        out[f"{var.name}|value"] = np.array(var.numpy())
    out["iterations"] = np.array(opt.iterations.numpy())
    return out


model = build()
rng = np.random.default_rng(index)  # each worker its own data: the all-reduce matters
x = rng.normal(size=(16, 8)).astype("float32")
y = rng.normal(size=(16, 4)).astype("float32")
if flavor == "keras3":
    opt = model.optimizer

    @tf.function
    def step(xb, yb):
        def fn(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(xb) - yb) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return strategy.run(fn, args=(xb, yb))

    for i in range(3):
        step(tf.constant(x[i * 4:(i + 1) * 4]), tf.constant(y[i * 4:(i + 1) * 4]))
else:
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
mine = values(model)
np.savez(os.path.join(outdir, f"worker{index}.npz"), **mine)
print(f"worker {index} trained, step {int(mine['iterations'])}", flush=True)

# 2. every worker exports, outside the strategy's scope
osf.export_state(model, archive, include_weights=True, max_shard_size=256)
if index == 0:
    with open(os.path.join(archive, _archive.INDEX_NAME), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(outdir, "after_first.json"), "w") as f:
        json.dump({"listing": sorted(os.listdir(archive)), "index_sha256": digest}, f)
print(f"worker {index} exported", flush=True)

# 3. every worker imports it into a fresh model, outside the scope (the optimizer is built
# by the import), and gets this worker's own values back, bit for bit
fresh = build()
report = osf.import_state(fresh, archive, include_weights=True)
assert report.ok, report
got = values(fresh)
assert set(got) == set(mine), (sorted(got), sorted(mine))
for key, want in mine.items():
    np.testing.assert_array_equal(got[key], want, err_msg=key)
print(f"worker {index} imported, {len(mine)} values equal", flush=True)

# 4. failures: the archive of step 2 must survive them, in every worker's view


def plan_fails(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


real_write_temp, written = _archive._write_temp, []


def write_fails_after_one(folder, final, *args, **kwargs):
    if final.startswith("shard-") and written:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
    tmp = real_write_temp(folder, final, *args, **kwargs)
    written.append(final)
    return tmp


for who, name, patch in ((1, "_local_groups", plan_fails), (0, "_write_temp", write_fails_after_one)):
    real = getattr(_archive, name)
    if index == who:
        setattr(_archive, name, patch)
    try:
        osf.export_state(model, archive, include_weights=True, max_shard_size=256)
        print(f"worker {index} failure of worker {who}: exported anyway", flush=True)
    except osf.OptStateError as e:
        print(f"worker {index} failure of worker {who}: {type(e).__name__} {e.code}: {e}",
              flush=True)
    finally:
        setattr(_archive, name, real)
print(f"worker {index} done", flush=True)
