"""Run by test_keras3_backends.py in a fresh process, under the Keras backend it is given.

usage: backend_worker.py BACKEND MODE FILE OUT
  export   train the two-branch model (a built first) 3 steps, export FILE with weights
  import   build it b first with an Activation in branch a, import FILE with weights
  resume   N steps, export FILE, import into a model built b first, M steps: against N+M
  rollback a failure injected mid-import restores trained and fresh optimizers bitwise
  optimizers  each built-in optimizer: export, import (b first), one more step on both
  callback OptStateCheckpoint (async) over 2 epochs of fit, resumed by a fresh callback into
           a changed model to epoch 4, against 4 uninterrupted epochs
OUT (npz) receives each role's slots and weights, so that the test compares by role.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = sys.argv[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))

import numpy as np  # noqa: E402
import keras  # noqa: E402

import optstate_format as osf  # noqa: E402
from optstate_format.converters import keras3 as conv  # noqa: E402
from keras_models import two_branch  # noqa: E402

assert keras.backend.backend() == sys.argv[1]


OPTIMIZERS = {"SGD": {"momentum": 0.9, "nesterov": True}, "RMSprop": {"centered": True},
              "Adam": {"amsgrad": True}, "AdamW": {}, "Adadelta": {}, "Adagrad": {},
              "Adamax": {}, "Adafactor": {}, "Nadam": {}, "Ftrl": {}, "Lion": {}, "Lamb": {}}


def batch(i):
    rng = np.random.default_rng(100 + i)
    return (rng.standard_normal((8, 6)).astype("float32"),
            rng.standard_normal((8, 1)).astype("float32"))


def train(model, start, count):
    for i in range(start, start + count):
        model.train_on_batch(*batch(i))


def by_role(model, roles):
    """{role/weight/slot: array} through Keras's own variable index (the oracle)."""
    opt = model.optimizer
    out = {"iterations": np.array(opt.iterations.numpy())}
    for role, layer in roles.items():
        for v in layer.trainable_weights:
            i = opt._get_variable_index(v)
            out[f"{role}/{v.name}/m"] = np.array(opt._momentums[i].numpy())
            out[f"{role}/{v.name}/v"] = np.array(opt._velocities[i].numpy())
            out[f"{role}/{v.name}/value"] = np.array(v.numpy())
    return out


def main():
    _, mode, file, out = sys.argv[1:5]
    if mode == "export":
        model, roles = two_branch()
        train(model, 0, 3)
        osf.export_state(model, file, include_weights=True)
        np.savez(out, **by_role(model, roles))
    elif mode == "import":
        model, roles = two_branch(insert_activation=True, b_first=True)
        osf.import_state(model, file, include_weights=True)
        np.savez(out, **by_role(model, roles))
    elif mode == "resume":
        full, roles_full = two_branch()
        first, _ = two_branch()
        first.set_weights(full.get_weights())  # the same start (built in the same order)
        train(full, 0, 5)
        train(first, 0, 3)
        osf.export_state(first, file, include_weights=True)
        second, roles_second = two_branch(b_first=True)
        osf.import_state(second, file, include_weights=True)
        train(second, 3, 2)
        a, b = by_role(full, roles_full), by_role(second, roles_second)
        np.savez(out, **{f"full:{k}": v for k, v in a.items()},
                 **{f"resumed:{k}": v for k, v in b.items()})
    elif mode == "rollback":
        src, _ = two_branch()
        train(src, 0, 2)
        osf.export_state(src, file, include_weights=True)
        results = {}
        for name, steps in (("trained", 1), ("fresh", 0)):
            dst, roles = two_branch(b_first=True)
            dst.optimizer.build(dst.trainable_variables)
            train(dst, 7, steps)
            before = by_role(dst, roles)
            calls = {"n": 0}

            def flaky(real):  # the import's own arrays go through adopt, the rest assign
                def call(var, value):
                    calls["n"] += 1
                    if calls["n"] == 6:
                        raise RuntimeError("device went away")
                    real(var, value)
                return call

            conv.ADAPTER.assign = flaky(type(conv.ADAPTER).assign.__get__(conv.ADAPTER))
            conv.ADAPTER.adopt = flaky(type(conv.ADAPTER).adopt.__get__(conv.ADAPTER))
            try:
                osf.import_state(dst, file, include_weights=True)
                raise SystemExit("the injected failure did not surface")
            except osf.OptStateError as e:
                assert e.code == "E_ASSIGN", e
            finally:
                del conv.ADAPTER.assign, conv.ADAPTER.adopt
            after = by_role(dst, roles)
            assert calls["n"] > 6
            for k in before:
                results[f"{name}:before:{k}"] = before[k]
                results[f"{name}:after:{k}"] = after[k]
        np.savez(out, **results)
    elif mode == "optimizers":
        # every built-in optimizer: export, import into a model built b-first, then one
        # more step on both with the same batch must give the same weights, role by role
        results = {}
        for name, kw in OPTIMIZERS.items():
            src, roles_src = two_branch(optimizer=getattr(keras.optimizers, name)(**kw))
            train(src, 0, 2)
            osf.export_state(src, file, include_weights=True)
            dst, roles_dst = two_branch(b_first=True,
                                        optimizer=getattr(keras.optimizers, name)(**kw))
            osf.import_state(dst, file, include_weights=True)
            train(src, 5, 1)
            train(dst, 5, 1)
            for role, layer in roles_src.items():
                for v, w in zip(layer.trainable_weights, roles_dst[role].trainable_weights):
                    results[f"{name}:{role}/{v.name}:src"] = np.array(v.numpy())
                    results[f"{name}:{role}/{v.name}:dst"] = np.array(w.numpy())
        np.savez(out, **results)
    elif mode == "callback":
        # the checkpoint callback under this backend: 2 epochs written asynchronously, then
        # a new callback resumes a model built in another order with parameterless layers
        # inserted, to epoch 4; the uninterrupted 4 epochs are the reference
        from pathlib import Path

        from optstate_format.converters.keras3 import OptStateCheckpoint
        from workflow_models import adam_slots_by_role, branchy, data, weights_by_role
        run_dir = Path(file).parent / "run"
        x, y = data()

        def fit(model, epochs, cbs=()):
            return model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
                             callbacks=list(cbs))
        keras.utils.set_random_seed(1)
        full, full_roles = branchy(keras, optimizer=keras.optimizers.Adam(0.01))
        fit(full, 4)
        keras.utils.set_random_seed(1)
        first, _ = branchy(keras, optimizer=keras.optimizers.Adam(0.01))
        cb = OptStateCheckpoint(run_dir, async_write=True)
        fit(first, 2, [cb])
        cb.wait()
        assert sorted(os.listdir(run_dir)) == ["ckpt-e0001-s000004.optstate",
                                               "ckpt-e0002-s000008.optstate"]
        keras.utils.set_random_seed(99)  # another initialization: all from the archive
        changed, changed_roles = branchy(keras, changed=True,
                                         optimizer=keras.optimizers.Adam(0.01))
        resumed = OptStateCheckpoint(run_dir)
        history = fit(changed, 4, [resumed])
        assert history.epoch == [2, 3], history.epoch
        assert os.path.basename(resumed.restored[0]) == "ckpt-e0002-s000008.optstate"
        assert int(np.asarray(changed.optimizer.iterations)) == 16
        out_arrays = {}
        for tag, model, roles in (("full", full, full_roles),
                                  ("resumed", changed, changed_roles)):
            for k, v in weights_by_role(roles).items():
                out_arrays[f"{tag}:w:{k}"] = v
            for k, v in adam_slots_by_role(model, roles).items():
                out_arrays[f"{tag}:s:{k}"] = v
        np.savez(out, **out_arrays)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
