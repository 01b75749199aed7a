"""Small builders shared by the core tests (no framework)."""

import numpy as np

from optstate_format import OptimizerInfo, OptimizerState, WeightEntry


def adam_state(n_weights=3, seed=0, step=4, with_values=False):
    rng = np.random.default_rng(seed)
    weights = []
    for i in range(n_weights):
        shape = (i + 2, 3)
        weights.append(WeightEntry(
            f"layer_{i}/kernel", shape, "float32",
            slots={"m": rng.standard_normal(shape).astype(np.float32),
                   "v": rng.random(shape).astype(np.float32)},
            value=rng.standard_normal(shape).astype(np.float32) if with_values else None,
            hints={"structural": f"g:{i:032x}", "name": None}))
    return OptimizerState(
        OptimizerInfo("adam", "Adam", "keras.optimizers", {"beta_1": 0.9, "beta_2": 0.999},
                      {"kind": "constant", "value": 0.001}),
        step=step, weights=weights, globals={"iterations": np.array(step, np.int64)},
        producer={"framework": "test", "framework_version": "0"})


def markdown_table(head, lines):
    """A Markdown table of string cells, columns padded to their widest cell (the zoo
    scripts print their results with it)."""
    lines = [tuple(head)] + [tuple(line) for line in lines]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"
            for line in lines]
    text.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return text
