"""Worker for test_archive_multiprocess.py: one of NPROCS JAX processes (4 CPU devices in all:
2 processes x 2 devices by default, or 1 process x 4) that export one Keras 3 model, trained
under a distribution, into one sharded archive.

usage: archive_mp_worker.py PROCESS_ID PORT MODE(dp|mp) ARCHIVE EXPECTED_NPZ [NPROCS]
"""

import os
import sys

pid, port, mode, archive, expected = (int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4],
                                      sys.argv[5])
nprocs = int(sys.argv[6]) if len(sys.argv) > 6 else 2
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // nprocs}"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402

if nprocs > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nprocs,
                               process_id=pid, initialization_timeout=90)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import distribution as kd  # noqa: E402

import optstate_format as osf  # noqa: E402

keras.utils.set_random_seed(0)  # initial values must agree across processes
devices = kd.list_devices()
assert len(devices) == 4 and jax.process_count() == nprocs
if mode == "dp":
    kd.set_distribution(kd.DataParallel(devices=devices))
else:
    # with 2 processes the 'model' axis spans them: each holds one half of d1's kernel
    grid = np.array(devices).reshape(2, 2).T.reshape(-1).tolist() if nprocs > 1 else devices
    mesh = kd.DeviceMesh((2, 2), ["batch", "model"], devices=grid)
    layouts = kd.LayoutMap(mesh)
    layouts["d1/kernel"] = (None, "model")
    kd.set_distribution(kd.ModelParallel(layout_map=layouts, batch_dim_name="batch"))

inp = keras.Input((8,), name="x")
h = keras.layers.Dense(16, name="d1")(inp)
out = keras.layers.Dense(4, name="d2")(h)
model = keras.Model(inp, out)
opt = keras.optimizers.Adam(learning_rate=0.01)
opt.build(model.trainable_variables)
model.compile(optimizer=opt, loss="mse")


def pattern(shape, seed):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n, dtype=np.float32).reshape(shape) * 0.5 + seed).astype(np.float32)


want = {}
for i, var in enumerate(model.trainable_variables):
    value = pattern(tuple(var.shape), 100 * i)
    var.assign(value)
    want[f"{var.path}|value"] = value
    k = opt._get_variable_index(var)
    for slot, store in (("m", opt._momentums), ("v", opt._velocities)):
        sv = pattern(tuple(var.shape), 100 * i + (1 if slot == "m" else 2) * 10)
        store[k].assign(sv)
        want[f"{var.path}|{slot}"] = sv
opt.iterations.assign(7)
if mode == "mp":
    kernel = model.get_layer("d1").kernel.value
    assert not kernel.is_fully_replicated and len(kernel.sharding.device_set) == 4
    assert kernel.is_fully_addressable == (nprocs == 1)
osf.export_state(model, archive, include_weights=True, max_shard_size=256)
if pid == 0:
    np.savez(expected, **want)
print(f"process {pid} exported", flush=True)
