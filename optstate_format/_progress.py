"""Progress bars for long command-line work, drawn with tqdm on standard error.

A bar is drawn only when both standard output and standard error are terminals (a piped or
redirected command stays quiet) and the work is at least ``MIN_BYTES``; ``OPTSTATE_PROGRESS=1``
or ``0`` forces it on or off. Without tqdm installed, nothing is drawn.

>>> with progress(10, "demo", enabled=False) as bar:
...     bar.update(10)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import numpy as np

from . import _dtypes
from ._state import LazyTensor, OptimizerState, WeightEntry

MIN_BYTES = 256 * 2**20  # below this the work takes about a second: no bar


class _Null:
    def update(self, n=1):
        pass

    def set_description_str(self, s):
        pass


def wanted(total_bytes=None) -> bool:
    """Whether a bar should be drawn for ``total_bytes`` of work."""
    forced = os.environ.get("OPTSTATE_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    if total_bytes is not None and total_bytes < MIN_BYTES:
        return False
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress(total_bytes, desc, *, enabled=None):
    """A context giving an object with ``update(nbytes)``: a tqdm bar, or a silent stand-in."""
    if enabled is None:
        enabled = wanted(total_bytes)
    bar = None
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency; degrade quietly
            tqdm = None
        if tqdm is not None:
            bar = tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True,
                       unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        yield bar if bar is not None else _Null()
    finally:
        if bar is not None:
            bar.close()


def _nbytes(t):
    if t is None:
        return 0
    if isinstance(t, LazyTensor):
        return math.prod(t.shape) * _dtypes.itemsize(t.dtype)
    return int(np.asarray(t).nbytes)


def _dtype(t):
    return t.dtype if isinstance(t, LazyTensor) else _dtypes.name_of(np.asarray(t).dtype)


def state_bytes(state: OptimizerState) -> int:
    """Bytes of tensor data ``state`` holds (what a write of it moves)."""
    total = sum(_nbytes(t) for t in state.globals.values())
    for w in state.weights:
        total += sum(_nbytes(t) for t in w.slots.values()) + _nbytes(w.value)
    return total


def tracked(state: OptimizerState, bar) -> OptimizerState:
    """A copy of ``state`` whose tensors advance ``bar`` by their size when the writer fetches
    them (``osf.write(tracked(state, bar), path)`` shows the write's progress)."""
    def wrap(t):
        if t is None:
            return None
        n = _nbytes(t)

        def fetch(t=t, n=n):
            arr = np.asarray(t)
            bar.update(n)
            return arr
        return LazyTensor(t.shape, _dtype(t), fetch)

    weights = [WeightEntry(w.path, w.shape, w.dtype, w.trainable,
                           {k: wrap(v) for k, v in w.slots.items()}, wrap(w.value),
                           dict(w.hints), w.component) for w in state.weights]
    return OptimizerState(state.optimizer, state.step, weights,
                          {k: wrap(v) for k, v in state.globals.items()}, dict(state.producer),
                          dict(state.metadata), state.version)
