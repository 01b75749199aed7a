"""How tests/support/data/v1.0/keras3_seed_adam.optstate was made (format 1.0, kept as test data so that
later format versions prove they still read it). Not rerun by the tests.

    KERAS_BACKEND=tensorflow python tests/support/data/make_v1_0.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

import optstate_format as osf  # noqa: E402
from keras_models import seed_model  # noqa: E402

def main():
    model, _ = seed_model((32, 240, 4))
    rng = np.random.default_rng(0)
    for _ in range(3):
        model.train_on_batch(rng.standard_normal((32, 240, 4)).astype("float32"),
                             rng.standard_normal((32, 1)).astype("float32"))
    osf.export_state(model, os.path.join(os.path.dirname(__file__), "v1.0",
                                         "keras3_seed_adam.optstate"), include_weights=True,
                     metadata={"made_by": "tests/support/data/make_v1_0.py"})


if __name__ == "__main__":
    main()
