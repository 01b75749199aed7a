"""Validation of a file against the spec, as a report (``optstate check``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _dtypes
from ._errors import OptStateError
from ._io import read
from ._versions import CURRENT_VERSION, parse_version


@dataclass
class CheckReport:
    """Outcome of :func:`check`: ``valid``, the error (code, message) and warnings."""

    path: str
    valid: bool
    code: str | None = None
    message: str | None = None
    warnings: list = field(default_factory=list)
    tensors: int = 0

    def __str__(self):
        head = (f"{self.path}: valid ({self.tensors} tensors verified)" if self.valid
                else f"{self.path}: INVALID {self.code}: {self.message}")
        return "\n".join([head] + [f"  warning: {w}" for w in self.warnings])


def _nonfinite(arr):
    name = _dtypes.name_of(arr.dtype) if arr.dtype != np.uint16 else "uint16"
    if name not in ("float16", "float32", "float64"):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def check(path) -> CheckReport:
    """Validate ``path`` completely (container, header, every checksum).

    Never raises for a bad file: the report says what is wrong, with the
    error's stable code. NaN/Inf in slots are legitimate but reported as warnings.

    >>> check("missing.optstate").code
    'E_IO'
    """
    try:
        state = read(path, verify=True)
    except OptStateError as e:
        return CheckReport(str(path), False, e.code, e.msg)
    rep = CheckReport(str(path), True)
    n = len(state.globals)
    for w in state.weights:
        for name, arr in w.slots.items():
            n += 1
            bad = _nonfinite(arr)
            if bad:
                rep.warnings.append(f"{w.path} slot {name!r}: {bad} NaN/Inf value(s)")
        if w.value is not None:
            n += 1
            bad = _nonfinite(w.value)
            if bad:
                rep.warnings.append(f"{w.path} value: {bad} NaN/Inf value(s)")
    rep.tensors = n
    v = parse_version(state.version)
    if v and v > CURRENT_VERSION:
        rep.warnings.append(f"file version {state.version} is newer than this reader "
                            f"({CURRENT_VERSION[0]}.{CURRENT_VERSION[1]}); unknown fields ignored")
    return rep


def summarize(state):
    """A JSON-able summary of a state (also the conformance vectors' expected output)."""
    weights = []
    for w in state.weights:
        weights.append({
            "path": w.path, "shape": list(w.shape), "dtype": w.dtype, "trainable": w.trainable,
            "slots": {k: {"shape": list(v.shape), "dtype": dtype_of(v)}
                      for k, v in sorted(w.slots.items())},
            "has_value": w.value is not None,
            "hints": w.hints, **({"component": w.component}
                                 if state.optimizer.components else {})})
    return {
        "version": state.version, "producer": state.producer,
        "optimizer": {"algorithm": state.optimizer.algorithm,
                      "class_name": state.optimizer.class_name,
                      "hyperparameters": state.optimizer.hyperparameters,
                      "learning_rate": state.optimizer.learning_rate,
                      "wrappers": state.optimizer.wrappers,
                      **({"components": state.optimizer.components}
                         if state.optimizer.components else {})},
        "step": state.step,
        "globals": {k: {"shape": list(v.shape), "dtype": dtype_of(v),
                        "value": v.tolist() if v.size == 1 else None}
                    for k, v in sorted(state.globals.items())},
        "weights": weights, "metadata": state.metadata,
    }


def dtype_of(arr):
    try:
        return _dtypes.name_of(arr.dtype)
    except OptStateError:
        return str(arr.dtype)
