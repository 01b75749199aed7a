"""The workers of a ``tf.distribute.MultiWorkerMirroredStrategy`` job, as the core's
writers of one archive see them (spec 14.10): who they are, and how they exchange a few
messages (broadcast from worker 0, gather from all).

TensorFlow says who the workers are and carries the messages only through private modules
(the cluster's worker numbering, the coordination service's key-value store). They are
declared once, in :func:`_private`'s table: a TensorFlow release that moved them stops a
sharded export with ``UnsupportedError`` naming the version, instead of each worker
writing an archive of its own. Imported by the core only when the program has loaded
TensorFlow; TensorFlow itself is never imported here before that.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np

from optstate_format._errors import StorageError, UnsupportedError

from ._private import PrivateAPI

SUPPORTED = ">=2.20,<2.22"


@functools.lru_cache(maxsize=1)
def _private():
    tf = sys.modules["tensorflow"]
    return PrivateAPI("tensorflow", getattr(tf, "__version__", "?"), SUPPORTED, modules={
        "tensorflow.python.eager.context:context": "the eager context, which holds the "
        "coordination service's key-value store (set/get/delete_config_key_value)",
        "tensorflow.python.distribute:multi_worker_util": "the cluster's worker count and "
        "each worker's id (normalize_cluster_spec, worker_count, id_in_cluster)",
    })


class _TfProcesses:
    """The workers of a ``tf.distribute.MultiWorkerMirroredStrategy`` job: broadcast from
    worker 0 (the chief, if the cluster has one) and gather from all, through the key-value
    store of TensorFlow's coordination service, which the strategy starts on every worker.

    Every worker makes the same sequence of calls (as with any collective), so the n-th call
    uses the keys ``optstate_format/<n>/<worker>``; a worker deletes the keys it set once a
    later gather proves that every worker has read them. A worker that does not answer
    within ``TIMEOUT`` seconds (or a coordination service that reports it gone) fails the
    call with ``E_WRITE``; ``OPTSTATE_PROCESS_TIMEOUT`` (seconds) sets another limit. (A
    worker that dies is not reported by the coordination service for minutes, if at all:
    the others wait for the limit.)"""

    TIMEOUT = 3600.0
    _calls = 0      # calls made by this process, over every export of the job
    _mine = []      # [(call, key)] set by this process and not yet deleted

    def __init__(self, strategy, index, count, ctx=None):
        if ctx is None:
            ctx = _private().load("tensorflow.python.eager.context:context")()
        self._ctx, self.index, self.count = ctx, index, count
        raw = os.environ.get("OPTSTATE_PROCESS_TIMEOUT")
        try:
            self.timeout = self.TIMEOUT if raw is None else float(raw)
        except ValueError:
            self.timeout = -1.0
        if not 0 < self.timeout < math.inf:
            raise UnsupportedError(f"OPTSTATE_PROCESS_TIMEOUT must be a positive number of "
                                   f"seconds, got {raw!r}.")

    def _key(self, n, worker):
        return f"optstate_format/{n}/{worker}"

    def _next(self):
        n = type(self)._calls
        type(self)._calls = n + 1
        return n

    def _set(self, n, text):
        key = self._key(n, self.index)
        try:
            self._ctx.set_config_key_value(key, text)
        except Exception as e:  # noqa: BLE001 - TensorFlow's errors, told as ours
            raise self._error("cannot publish to the other workers", e) from None
        type(self)._mine.append((n, key))

    def _get(self, n, worker):
        try:
            return self._ctx.get_config_key_value(self._key(n, worker),
                                                  max(1, int(self.timeout * 1000)))
        except Exception as e:  # noqa: BLE001 - a timeout, a worker gone: TensorFlow's errors
            raise self._error(f"worker {worker} did not answer (every worker of the job must "
                              "call the export, with the same path)", e) from None

    def _error(self, what, e):
        first = (str(e).strip().splitlines() or [""])[0][:500]
        return StorageError(f"worker {self.index} of {self.count} (tf.distribute): {what} "
                            f"({type(e).__name__}: {first}). The archive was not committed; "
                            "the previous archive (if any) is unchanged.")

    def prepare(self, tensors):
        """The planned tensors, those whose read is itself a collective read by every worker
        (in plan order, the same everywhere) and kept as read: an on-read variable (tf_keras's
        BatchNormalization moving statistics, a metric) is read as the aggregate of the
        workers' copies, which needs them all; worker 0 then writes it as any other value."""
        out = []
        for key, dtype, shape, source in tensors:
            if _on_read(getattr(source, "handle", None)):
                source = np.asarray(source)
            out.append((key, dtype, shape, source))
        return out

    def broadcast(self, text):
        n = self._next()
        if self.index == 0:
            self._set(n, text)
            return text
        return self._get(n, 0)

    def gather(self, text):
        n = self._next()
        self._set(n, text)
        out = [text if w == self.index else self._get(n, w) for w in range(self.count)]
        # every worker has set its key of call n, so it has read every key of earlier calls
        done = [k for c, k in type(self)._mine if c < n]
        type(self)._mine = [(c, k) for c, k in type(self)._mine if c >= n]
        for key in done:
            try:
                self._ctx.delete_config_key_value(key)
            except Exception:  # noqa: BLE001 - a key left behind costs a few bytes
                pass
        return out


def _on_read(handle):
    """Whether a TensorFlow (or Keras 3) variable is synchronized on read."""
    for v in (handle, getattr(handle, "value", None)):
        sync = getattr(v, "synchronization", None)
        if sync is not None and str(getattr(sync, "name", sync)).upper() == "ON_READ":
            return True
    return False


def _tf_strategy(handle):
    """The tf.distribute strategy that made a framework variable (TensorFlow's own, or a
    Keras 3 variable on the TensorFlow backend), or None."""
    for v in (handle, getattr(handle, "value", None)):
        strategy = getattr(v, "distribute_strategy", None)
        if strategy is not None and hasattr(strategy, "scope"):
            return strategy
    return None


def _tf_workers(state):
    """(strategy, worker index, worker count) of a multi-worker tf.distribute job that
    ``state``'s variables belong to (or whose scope the program is in), or None."""
    tf = sys.modules.get("tensorflow")
    dist = getattr(tf, "distribute", None)
    mwms = getattr(dist, "MultiWorkerMirroredStrategy", None)
    if not isinstance(mwms, type):
        return None
    strategy = dist.get_strategy() if dist.has_strategy() else None
    if strategy is None and state is not None:
        tensors = [t for w in state.weights for t in (w.value, *w.slots.values())]
        for t in tensors + list(state.globals.values()):
            strategy = _tf_strategy(getattr(t, "handle", None))
            if strategy is not None:
                break
    if not isinstance(strategy, mwms):
        return None
    multi_worker_util = _private().load(
        "tensorflow.python.distribute:multi_worker_util")
    resolver = strategy.cluster_resolver
    spec = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    if not spec.jobs or resolver.task_type is None:
        return None
    count = multi_worker_util.worker_count(spec, resolver.task_type)
    index = multi_worker_util.id_in_cluster(spec, resolver.task_type, resolver.task_id)
    return (strategy, index, count) if count > 1 else None


def processes(state=None):
    """The workers of the MultiWorkerMirroredStrategy job ``state``'s variables belong to
    (or whose scope the program is in), as a :class:`_TfProcesses`; None otherwise."""
    try:
        workers = _tf_workers(state)
    except UnsupportedError:
        raise
    except Exception:  # pragma: no cover - a cluster TensorFlow cannot describe: one process
        workers = None
    return _TfProcesses(*workers) if workers is not None else None
