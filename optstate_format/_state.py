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
