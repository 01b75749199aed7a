"""Validation of a file against the spec, as a report (``optstate check``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import _dtypes
from ._errors import OptStateError
from ._io import read, read_with_dtypes
from ._paths import global_key, slot_key
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


def check(path, *, progress=None) -> CheckReport:
    """Validate ``path`` completely (container, header, every checksum).

    Never raises for a bad file: the report says what is wrong, with the
    error's stable code. NaN/Inf in slots are legitimate but reported as warnings.

    >>> check("missing.optstate").code
    'E_IO'
    """
    try:
        return _check(path, progress)
    except OptStateError as e:
        return CheckReport(str(path), False, e.code, e.msg)
    except Exception as e:  # never raise for a bad file: a foreign error is a bug, reported
        return CheckReport(str(path), False, "E_FORMAT",
                           f"unexpected {type(e).__name__} while checking ({str(e)[:120]}); "
                           "this is a checker bug: please report it with the file.")


def _check(path, progress=None):
    state = read(path, verify=True, progress=progress)
    rep = CheckReport(str(path), True)
    n = len(state.globals)
    def nonfinite(arr):  # the arrays proven finite while read cost no second pass
        return _dtypes.count_nonfinite(arr, state._proven_finite)
    for w in state.weights:
        for name, arr in w.slots.items():
            n += 1
            bad = nonfinite(arr)
            if bad:
                rep.warnings.append(f"{w.path} slot {name!r}: {bad} NaN/Inf value(s)")
        if w.value is not None:
            n += 1
            bad = nonfinite(w.value)
            if bad:
                rep.warnings.append(f"{w.path} value: {bad} NaN/Inf value(s)")
    rep.tensors = n
    v = parse_version(state.version)
    if v and v > CURRENT_VERSION:
        rep.warnings.append(f"file version {state.version} is newer than this reader "
                            f"({CURRENT_VERSION[0]}.{CURRENT_VERSION[1]}); unknown fields ignored")
    return rep


def summarize(state, dtypes=None):
    """The summary of a state as spec 13.1 defines it (also the conformance vectors' expected
    output and ``optstate inspect --json``). ``dtypes`` maps tensor keys to the dtype names
    the container gives them (:func:`summary` passes them); without it, from the arrays."""
    def described(key, arr, with_value):
        name = (dtypes or {}).get(key) or dtype_of(arr)
        out = {"shape": [int(d) for d in arr.shape], "dtype": name}
        if with_value:
            out["value"] = _scalar(arr, name) if arr.ndim == 0 else None
        return out

    multi = bool(state.optimizer.components)
    weights = []
    for w in state.weights:
        weights.append({
            "path": w.path, "shape": list(w.shape), "dtype": w.dtype, "trainable": w.trainable,
            "slots": {k: described(slot_key(w.path, k), v, False)
                      for k, v in sorted(w.slots.items())},
            "has_value": w.value is not None,
            "hints": w.hints, **({"component": w.component} if multi else {})})
    return _finite({
        "version": state.version, "producer": state.producer,
        "optimizer": {"algorithm": state.optimizer.algorithm,
                      "class_name": state.optimizer.class_name,
                      "hyperparameters": state.optimizer.hyperparameters,
                      "learning_rate": state.optimizer.learning_rate,
                      "wrappers": state.optimizer.wrappers,
                      **({"components": state.optimizer.components} if multi else {})},
        "step": state.step,
        "globals": {k: described(global_key(k), v, True)
                    for k, v in sorted(state.globals.items())},
        "weights": weights, "metadata": state.metadata,
    })


def summary(path, *, verify=True, progress=None) -> dict:
    """Read ``path`` and return its summary (spec 13.1), dtypes from the container."""
    state, dtypes = read_with_dtypes(path, verify=verify, progress=progress)
    return summarize(state, dtypes)


NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _scalar(arr, name):
    """The one element of a shape-[] tensor as a JSON value (spec 13.1): bool, exact int, or
    the float64 the value widens to exactly (bfloat16 from its raw word if need be)."""
    if name == "bool":
        return bool(arr)
    if name == "bfloat16" and arr.dtype.kind == "u":  # raw words: no bfloat16 type here
        arr = (np.asarray(arr, np.uint32) << 16).view(np.float32)
    if name in _dtypes.FLOATING:
        return float(arr)
    return int(arr)


def _finite(obj):
    """``obj`` with every non-finite float replaced by ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"`` (spec 13.1: the summary is plain JSON)."""
    if type(obj) is float:
        return obj if math.isfinite(obj) else NONFINITE[repr(obj)]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dtype_of(arr):
    try:
        return _dtypes.name_of(arr.dtype)
    except OptStateError:
        return str(arr.dtype)
