"""How tests/support/data/v1.0/{keras3,tf_keras}_unnamed_scale_shift.optstate were made: format 1.0,
written by the 1.0 writer (commit 5066abf, before generated weight names stopped being
identities), kept so that later readers prove what they do with 1.0 files holding weights named
``variable_<n>`` / ``Variable``. Every weight and Adam slot holds values naming its role
(tests/support/unnamed_models.py: fill_by_role). Not rerun by the tests (rerunning it now would write
the current format).

    KERAS_BACKEND=tensorflow python tests/support/data/make_v1_0_unnamed.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tf_keras  # noqa: E402

import optstate_format as osf  # noqa: E402
from unnamed_models import branches, fill_by_role, move_counters, train  # noqa: E402


def main():
    for tag, K in (("keras3", keras), ("tf_keras", tf_keras)):
        move_counters(K, 2)
        model, roles = branches(K)
        train(model)
        fill_by_role(model, roles)
        osf.export_state(model, os.path.join(os.path.dirname(__file__), "v1.0",
                                             f"{tag}_unnamed_scale_shift.optstate"),
                         include_weights=True,
                         metadata={"made_by": "tests/support/data/make_v1_0_unnamed.py"})


if __name__ == "__main__":
    main()
