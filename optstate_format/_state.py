"""The framework-free state model: plain dataclasses holding numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._versions import CURRENT_VERSION_STR


class LazyTensor:
    """A tensor whose bytes are fetched only when the writer reaches it.

    Converters hand these to :func:`write` so that an export never holds a
    second copy of the whole state: ``fetch()`` is called once, the result is
    written and dropped before the next tensor is fetched.

    >>> t = LazyTensor((2,), "float32", lambda: np.ones(2, np.float32))
    >>> t.shape, t.dtype
    ((2,), 'float32')
    """

    __slots__ = ("shape", "dtype", "fetch")

    def __init__(self, shape, dtype: str, fetch: Callable[[], Any]):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.fetch = fetch

    def __array__(self, dtype=None, copy=None):
        arr = np.asarray(self.fetch())
        return arr.astype(dtype) if dtype is not None else arr


@dataclass
class WeightEntry:
    """One model weight: its canonical path, identity hints, and its optimizer slots.

    ``slots`` maps canonical slot names (spec/optimizers.md) to arrays;
    ``value`` is the weight itself when the file is a full training state.
    """

    path: str
    shape: tuple
    dtype: str
    trainable: bool = True
    slots: dict = field(default_factory=dict)
    value: Any = None
    hints: dict = field(default_factory=dict)
    component: int = 0  # index into OptimizerInfo.components (algorithm "multi" only)


@dataclass
class OptimizerInfo:
    """The optimizer as data: registry algorithm id, class name, hyperparameters."""

    algorithm: str
    class_name: str
    module: str = ""
    hyperparameters: dict = field(default_factory=dict)
    learning_rate: dict = field(default_factory=dict)
    wrappers: list = field(default_factory=list)
    # algorithm "multi": one entry per inner optimizer, each {algorithm, class_name, module,
    # hyperparameters, learning_rate}; weights name theirs by ``WeightEntry.component``.
    components: list = field(default_factory=list)

    def algorithm_of(self, component: int) -> str:
        """The algorithm whose registry rules apply to a weight of ``component``."""
        if self.components:
            return self.components[component]["algorithm"]
        return self.algorithm


@dataclass
class OptimizerState:
    """Everything an optstate file holds.

    >>> st = OptimizerState(OptimizerInfo("sgd", "SGD"), step=3)
    >>> st.version
    '1.2'
    """

    optimizer: OptimizerInfo
    step: int = 0
    weights: list = field(default_factory=list)
    globals: dict = field(default_factory=dict)
    producer: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    version: str = CURRENT_VERSION_STR

    def weight(self, path: str) -> WeightEntry:
        """The entry with canonical ``path`` (KeyError if absent)."""
        for w in self.weights:
            if w.path == path:
                return w
        raise KeyError(path)

    @property
    def paths(self):
        return [w.path for w in self.weights]


def box_of(index, shape):
    """``(start, stop)`` tuples of a region given as a tuple of slices (step 1), as JAX
    names a device's part of an array.

    >>> box_of((slice(None), slice(4, 8)), (3, 8))
    ((0, 4), (3, 8))
    """
    index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
    bounds = []
    for sl, n in zip(index, shape):
        a, b, step = sl.indices(n)
        if step != 1:
            raise ValueError(f"a region is a box of step 1; received {index}")
        bounds.append((a, max(a, b)))
    return tuple(b[0] for b in bounds), tuple(b[1] for b in bounds)


class Regions:
    """Some regions of a tensor, read from a file and verified: the parts of a variable
    this process holds when the variable is split over several processes (spec 14.11).

    ``shape`` and ``dtype`` are the whole tensor's; ``boxes`` maps ``(start, stop)`` tuples
    to the arrays of those regions. :meth:`box` gives the array of any region inside one of
    them, as a view. An adapter receives a ``Regions`` in ``assign`` only for a variable its
    ``local_boxes`` split (adapter protocol).

    >>> r = Regions((2, 4), "float32", {((0, 2), (2, 4)): np.ones((2, 2), np.float32)})
    >>> r.box((slice(None), slice(2, 4))).shape, r.box((slice(0, 1), slice(3, 4))).tolist()
    ((2, 2), [[1.0]])
    """

    __slots__ = ("shape", "dtype", "boxes")

    def __init__(self, shape, dtype: str, boxes: dict):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.boxes = boxes

    @classmethod
    def cut(cls, arr, dtype: str, boxes):
        """The ``boxes`` of a whole array ``arr``, as views of it.

        >>> Regions.cut(np.arange(6).reshape(2, 3), "int64", [((0, 1), (2, 3))]).box(
        ...     (slice(None), slice(1, 3))).tolist()
        [[1, 2], [4, 5]]
        """
        return cls(arr.shape, dtype, {box: arr[tuple(slice(a, b) for a, b in zip(*box))]
                                      for box in boxes})

    def box(self, index) -> np.ndarray:
        start, stop = box_of(index, self.shape)
        got = self.boxes.get((start, stop))
        if got is not None:
            return got
        for (a, b), arr in self.boxes.items():
            if all(a0 <= s and t <= b0 for a0, b0, s, t in zip(a, b, start, stop)):
                return arr[tuple(slice(s - a0, t - a0) for a0, s, t in zip(a, start, stop))]
        raise KeyError(f"the region {list(start)}..{list(stop)} of a {list(self.shape)} tensor "
                       "was not read in this process")

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Regions holds only some regions of a tensor; use box(index)")
