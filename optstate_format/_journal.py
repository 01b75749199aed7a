"""The rollback journal: every assignment of an import, all or nothing.

The plan has checked everything before the first assignment; the journal guards
against what no check can see: the framework failing mid-way (a device error)
and interrupts. Each variable's previous value is recorded *before* it is
assigned, so a failure at any point restores exactly the variables touched.
SIGINT is held back while the journal runs (in the main thread): an interrupt
that arrives mid-way rolls everything back and is then re-raised; one that
arrives during the rollback cannot cut it short.
"""

from __future__ import annotations

import signal
import threading

import numpy as np

from .adapter import ABSENT
from ._errors import OptStateError

_PREFIX = 4096        # elements compared before a full scan: trained state fails fast
_CHUNK = 1 << 22      # elements per comparison, bounding the temporary mask (4 MB)


def constant_value(arr):
    """One element of ``arr`` (a 1-element array) if every element has its bits, else None.

    Compares bit patterns, not values: -0.0 is not 0.0 and NaN payloads count, so
    :func:`filled` rebuilds the array bitwise. Costs one read of ``arr`` when it is
    constant and a few thousand elements when it is not.

    >>> constant_value(np.zeros((3, 2), np.float32)), constant_value(np.array([0.0, -0.0]))
    (array([0.], dtype=float32), None)
    """
    arr = np.asarray(arr)
    size = arr.dtype.itemsize
    if arr.size == 0 or size not in (1, 2, 4, 8) or not arr.flags.c_contiguous:
        return None
    flat = arr.reshape(-1)
    bits = flat.view(np.dtype(f"u{size}"))
    first = bits[0]
    if np.count_nonzero(bits[:_PREFIX] != first):
        return None
    for start in range(_PREFIX, bits.size, _CHUNK):
        chunk = bits[start:start + _CHUNK]
        # zeros (the usual case) need no temporary mask at all
        if np.count_nonzero(chunk if first == 0 else chunk != first):
            return None
    return flat[:1].copy()


def filled(value, shape):
    """An array of ``shape`` whose every element has the bits of ``value[0]``.

    >>> filled(np.array([-0.0], np.float32), (2,)).tobytes() == np.array([-0.0, -0.0], np.float32).tobytes()
    True
    """
    value = np.asarray(value)
    unsigned = np.dtype(f"u{value.dtype.itemsize}")
    out = np.empty(shape, value.dtype)
    out.reshape(-1).view(unsigned)[...] = value.view(unsigned)[0]
    return out


def _entry(adapter, handle, shape):
    """What restores ``handle`` to its current value: ABSENT, one repeated value, or a snapshot.

    A variable whose every element has the same bits (a fresh optimizer's zeros, Adagrad's
    initial accumulator) is kept as that one value, so importing into a rebuilt model keeps
    no second copy of the state.
    """
    snap = adapter.snapshot(handle)
    if snap is ABSENT:
        return ("absent", ABSENT, None)
    if getattr(snap, "is_fully_addressable", True) is False:  # spread over processes
        return ("value", snap, None)
    value = constant_value(np.asarray(snap))
    if value is not None:
        return ("fill", value, shape)
    return ("value", snap, None)


def _restore(adapter, handle, entry):
    if entry[0] == "fill":
        adapter.restore(handle, filled(entry[1], entry[2]))
    else:
        adapter.restore(handle, entry[1])


class _HeldInterrupts:
    """Hold SIGINT back (main thread only); ``arrived`` tells whether one came.

    Only Python's default handler (SIGINT raises KeyboardInterrupt) is replaced: a process
    that ignores SIGINT keeps ignoring it, and one with a handler of its own keeps it (the
    journal still restores everything if that handler raises)."""

    def __init__(self):
        self.arrived = False
        self._old = None

    def _handler(self, signum, frame):
        self.arrived = True

    def __enter__(self):
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
            except (ValueError, OSError):  # pragma: no cover - embedded interpreters
                self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _rollback(adapter, journal):
    """Restore every journalled variable, newest first; return those that failed twice."""
    failed = []
    for handle, entry in reversed(journal):
        for attempt in (1, 2):
            try:
                _restore(adapter, handle, entry)
                break
            except Exception as e:  # noqa: BLE001 - a framework error; try once more
                if attempt == 2:
                    failed.append(f"{type(e).__name__}: {e}")
    return failed


def _memory_owner(arr):
    """The object that owns ``arr``'s memory (the end of its ``base`` chain)."""
    while isinstance(getattr(arr, "base", None), np.ndarray):
        arr = arr.base
    return arr


def apply(adapter, assignments, *, rollback: bool = True, owned: bool = False,
          agree=None) -> int:
    """Make every assignment (variable, shape, array) through ``adapter``, all or nothing.

    Returns the number assigned. On any failure, or an interrupt, every variable
    already touched is restored and the error re-raised: ours as it is, an interrupt
    as ``KeyboardInterrupt``, a framework error as ``OptStateError`` ``E_ASSIGN``. If
    a restore fails too, ``E_ROLLBACK`` names how many variables may differ.
    ``rollback=False`` keeps no journal: a failure then leaves a partial import and
    says so (``E_ASSIGN``). ``owned=True``: the arrays are the caller's to give away (an
    import's private arrays); an adapter with ``adopt`` may keep each one as the variable's
    memory. Arrays sharing memory (one listed twice, or two views of one buffer) are
    adopted once at most: the others are assigned (copied), so no two variables alias.
    ``agree(failure)``: for an import made by every process of a job, called once, after
    the last assignment (``failure`` None) or on a failure (the exception): it tells the
    other processes and raises when any of them failed, which rolls this one back too.
    """
    finish = getattr(adapter, "finish", None)
    done = False
    try:
        count = _apply(adapter, assignments, rollback, owned, agree)
        done = True
        return count
    finally:
        if finish is not None:
            _finish(finish, raising=not done)


def _finish(finish, raising):
    """The adapter's optional ``finish()``, whatever the outcome. Its own failure is an
    ``E_ASSIGN`` when nothing else is being raised, and is left out when something is."""
    try:
        finish()
    except Exception as e:
        if not raising:
            raise OptStateError(f"completing the assignments failed ({type(e).__name__}: "
                                f"{e}); the optimizer may lack state it needs. Re-create the "
                                "optimizer and import again.", code="E_ASSIGN") from e


def _apply(adapter, assignments, rollback, owned, agree=None):
    journal = []
    done = 0
    adopt = getattr(adapter, "adopt", None) if owned else None
    given = set()
    told = agree is None
    with _HeldInterrupts() as held:
        try:
            for var, arr in assignments:
                if rollback:
                    journal.append((var.handle, _entry(adapter, var.handle, var.shape)))
                owner = (_memory_owner(arr) if adopt is not None
                         and isinstance(arr, np.ndarray) else None)
                if owner is not None and id(owner) not in given:
                    given.add(id(owner))
                    adopt(var.handle, arr)
                else:
                    adapter.assign(var.handle, arr)
                done += 1
                if held.arrived:
                    raise KeyboardInterrupt
            if not told:
                told = True
                agree(None)
        except BaseException as e:
            if not told:  # the others learn of this failure before anything else
                told = True
                try:
                    agree(e)
                except BaseException:  # noqa: BLE001 - it raises e (or fails to tell)
                    pass
            if not rollback:
                raise OptStateError(
                    f"assigning a variable failed ({type(e).__name__}: {e}) after "
                    f"{done} of {len(assignments)} assignments; rollback=False, so the "
                    "optimizer is partly updated. Import again, or re-create the optimizer.",
                    code="E_ASSIGN") from e
            failed = _rollback(adapter, journal)
            if failed:
                raise OptStateError(
                    f"the import failed ({type(e).__name__}: {e}) and {len(failed)} of "
                    f"{len(journal)} variables could not be restored ({failed[0]}); the model "
                    "may hold a mix of old and new values. Re-create the optimizer or reload "
                    "a checkpoint.", code="E_ROLLBACK") from e
            if isinstance(e, OptStateError) or not isinstance(e, Exception):
                raise  # ours, or an interrupt: everything is restored, let it through
            raise OptStateError(f"assigning a variable failed ({type(e).__name__}: {e}); every "
                                "variable already assigned was restored.",
                                code="E_ASSIGN") from e
    if held.arrived:  # an interrupt after the last assignment: the import is complete
        raise KeyboardInterrupt
    return len(assignments)
