"""Run in a fresh process by test_resume.py: train, export, import, continue.

usage: resume_worker.py MODE FILE OUT   (MODE: full | first | second)
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.experimental.enable_op_determinism()
import keras  # noqa: E402

import optstate_format as osf  # noqa: E402
from keras_models import small_model  # noqa: E402

N, M = 4, 3


def batches(start, count):
    for i in range(start, start + count):
        rng = np.random.default_rng(1000 + i)
        yield (rng.standard_normal((16, 8, 3)).astype("float32"),
               rng.standard_normal((16, 2)).astype("float32"))


def main(mode, file, out):
    keras.utils.set_random_seed(7 if mode != "second" else 12345)
    model, _ = small_model(keras.optimizers.Adam(0.01, amsgrad=True))
    if mode == "second":
        report = osf.import_state(model, file, include_weights=True)
        assert report.ok, report
    steps = {"full": (0, N + M), "first": (0, N), "second": (N, M)}[mode]
    for x, y in batches(*steps):
        model.train_on_batch(x, y)
    if mode == "first":
        osf.export_state(model, file, include_weights=True)
    np.savez(out, *model.get_weights(), it=int(model.optimizer.iterations.numpy()))


if __name__ == "__main__":
    main(*sys.argv[1:4])
