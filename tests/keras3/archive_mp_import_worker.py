"""Worker for test_archive_multiprocess.py: import a sharded archive into a Keras 3 model laid
out by a distribution, in one of NPROCS JAX processes, and compare every addressable piece
with the values the exporting processes assigned.

usage: archive_mp_import_worker.py PROCESS_ID NPROCS PORT MODE(dp|mp) ARCHIVE EXPECTED_NPZ
       [refused|fail-assign]

Prints how many bytes of tensors this process read (``read N bytes``). With ``refused``, the
import must fail (every process with the same error code, which is printed) and leave every
variable as it was; ``fail-assign`` makes process 0's third assignment fail, which must roll
back every process.
"""

import os
import sys

pid, nprocs, port, mode, archive, expected = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                              sys.argv[4], sys.argv[5], sys.argv[6])
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

keras.utils.set_random_seed(1)
devices = kd.list_devices()
assert len(devices) == 4
if mode == "dp":
    kd.set_distribution(kd.DataParallel(devices=devices))
else:
    grid = np.array(devices).reshape(2, 2).T.reshape(-1).tolist() if nprocs > 1 else devices
    layouts = kd.LayoutMap(kd.DeviceMesh((2, 2), ["batch", "model"], devices=grid))
    layouts["d1/kernel"] = (None, "model")
    kd.set_distribution(kd.ModelParallel(layout_map=layouts, batch_dim_name="batch"))

inp = keras.Input((8,), name="x")
out = keras.layers.Dense(4, name="d2")(keras.layers.Dense(16, name="d1")(inp))
model = keras.Model(inp, out)
model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
want = dict(np.load(expected))
if sys.argv[7:] in (["refused"], ["fail-assign"]):
    if sys.argv[7] == "fail-assign" and pid == 0:  # process 0's device fails at its 3rd
        from optstate_format.converters import keras3 as k3
        real, calls = k3.ADAPTER.assign, []

        def failing(var, value):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("device lost")
            return real(var, value)
        k3.ADAPTER.assign = failing
    model.optimizer.build(model.trainable_variables)
    variables = list(model.variables) + list(model.optimizer.variables)
    before = [[np.asarray(s.data) for s in v.value.addressable_shards] for v in variables]
    try:
        osf.import_state(model, archive, include_weights=True)
    except osf.OptStateError as e:
        for v, old in zip(variables, before):
            for s, o in zip(v.value.addressable_shards, old):
                np.testing.assert_array_equal(np.asarray(s.data), o)
        print(f"process {pid} of {nprocs} refused: {e.code}; nothing changed", flush=True)
        print(str(e)[:500], flush=True)
        sys.exit(0)
    raise AssertionError("the import of a damaged archive went through")
report = osf.import_state(model, archive, include_weights=True)
print(f"process {pid} read {report.bytes_read} bytes", flush=True)
assert report.ok and len(report.matched) == 4, report
opt = model.optimizer
checked = 0
for var in model.trainable_variables:
    k = opt._get_variable_index(var)
    for what, v in (("value", var), ("m", opt._momentums[k]), ("v", opt._velocities[k])):
        arr = v.value
        for s in arr.addressable_shards:  # each piece this process holds
            np.testing.assert_array_equal(np.asarray(s.data), want[f"{var.path}|{what}"][s.index])
            checked += 1
assert int(np.asarray(opt.iterations.value.addressable_shards[0].data)) == 7
if mode == "mp":
    spec = model.get_layer("d1").kernel.value.sharding.spec
    assert tuple(spec) == (None, "model"), spec  # the target's layout is kept
print(f"process {pid} of {nprocs} imported, {checked} pieces equal", flush=True)
