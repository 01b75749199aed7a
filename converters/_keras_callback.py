"""``OptStateCheckpoint``: training-state archives written during ``fit`` and restored by role.

One implementation serves both Keras generations: :func:`checkpoint_class` builds the callback
on the framework's own ``Callback`` base class (``keras.callbacks.Callback`` or
``tf_keras.callbacks.Callback``). Only the public API of ``optstate_format`` is used, plus
:func:`snapshot_state`, the one core hook the asynchronous writer needs (see its docstring).
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings

import numpy as np

import optstate_format as osf
from optstate_format._errors import FormatError, IntegrityError, OptStateError, UnsupportedError

#: Archive names sort by (epoch, step); both are parsed as numbers, so wider numbers still sort.
ARCHIVE_RE = re.compile(r"^ckpt-e(\d+)-s(\d+)\.optstate$")

# metadata keys (the file's metadata maps strings to strings, spec 4)
META_EPOCH = "training.epoch"   # epochs completed: fit continues with this epoch index
META_BATCH = "training.batch"   # batches already done in that epoch (0 at an epoch boundary)
META_STEP = "training.step"     # the optimizer's iterations when written
META_WRITER = "training.writer"


def archive_name(epoch: int, step: int) -> str:
    """The file name of the archive written after ``epoch`` epochs and ``step`` steps.

    >>> archive_name(3, 120)
    'ckpt-e0003-s000120.optstate'
    """
    return f"ckpt-e{int(epoch):04d}-s{int(step):06d}.optstate"


def list_archives(directory) -> list:
    """The archives in ``directory``, newest first (by epoch, then step); [] if none."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = ARCHIVE_RE.match(name)
        if m and os.path.isfile(os.path.join(directory, name)):
            found.append(((int(m.group(1)), int(m.group(2))), os.path.join(directory, name)))
    return [p for _, p in sorted(found, reverse=True)]


def live_state(model, *, include_weights=True, metadata=None, materialize=False):
    """The ``OptimizerState`` that ``export_state(model, ...)`` would write.

    ``materialize=False``: tensors are fetched from the variables when the writer reaches them
    (``osf.write(live_state(model), path)`` is ``export_state``). ``materialize=True``: numpy
    copies of every variable, taken now: training may change the variables afterwards and
    the state still holds the values of now (what ``async_write`` pays on the training thread).

    Built by the core's conductor (``optstate_format._api.source_state``, what
    ``export_state`` itself writes from), which is not public yet.
    """
    from optstate_format import _api
    return _api.source_state(model, include_weights=include_weights, materialize=materialize,
                             metadata=metadata)


def snapshot_state(model, *, include_weights=True, metadata=None):
    """``live_state(..., materialize=True)``: numpy copies of every variable, taken now."""
    return live_state(model, include_weights=include_weights, metadata=metadata,
                      materialize=True)


def _positive_int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise UnsupportedError(f"{what} must be a positive integer. Received: {what}={value!r}.")
    return int(value)


class _CheckpointLogic:
    """The callback's behaviour; mixed into the framework's Callback by checkpoint_class()."""

    _generation = ""  # "keras3" or "tf_keras", set by checkpoint_class()

    def __init__(self, directory, *, save_freq="epoch", keep=3, include_weights=True,
                 async_write=False, verbose=0):
        super().__init__()
        if save_freq != "epoch":
            save_freq = _positive_int(save_freq, "save_freq")
        if keep is not None:
            keep = _positive_int(keep, "keep")
        self.directory = os.fspath(directory)
        self.save_freq = save_freq
        self.keep = keep
        self.include_weights = bool(include_weights)
        self.async_write = bool(async_write)
        self.verbose = verbose
        #: seconds the training thread spent in each save (snapshot only, when async)
        self.blocked_seconds = []
        #: (path, ImportReport) of the archive restored at the last on_train_begin, or None
        self.restored = None
        self._epoch = 0
        self._last_batch = -1
        self._since_save = 0
        self._thread = None
        self._error = None
        self._we_set_initial = False

    # ---- Keras hooks -------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._join_writer()
        self.restored = None
        model = self.model
        problems = []
        for path in list_archives(self.directory):
            try:
                meta = dict(osf.read_header(path).get("metadata") or {})
                epoch = int(meta.get(META_EPOCH, "x"))
                report = osf.import_state(model, path, include_weights=self.include_weights)
            except (FormatError, IntegrityError, OSError, ValueError) as e:
                if isinstance(e, osf.MatchError):
                    raise  # the model cannot take this archive: an older one will not fit better
                if isinstance(e, ValueError) and not isinstance(e, OptStateError):
                    e = FormatError(f"metadata {META_EPOCH!r} is missing or not an integer",
                                    code="E_RESUME", path=None)
                problems.append(f"{os.path.basename(path)}: {e}")
                warnings.warn(f"OptStateCheckpoint: {path} cannot be restored ({e}); trying the "
                              "previous archive.", RuntimeWarning, stacklevel=2)
                continue
            self.restored = (path, report)
            self._set_initial_epoch(model, epoch)
            self._epoch = epoch
            if self.verbose:
                print(f"OptStateCheckpoint: restored {path} by role ({len(report.matched)} "
                      f"weights); continuing at epoch {epoch + 1}.")
            return
        if problems:
            raise FormatError(
                f"no archive in {self.directory} can be restored, and training would otherwise "
                "start over silently. Move the folder aside to start afresh. Each archive:\n  "
                + "\n  ".join(problems), code="E_RESUME")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_batch = -1

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._since_save += batch - self._last_batch  # steps_per_execution may skip batches
        self._last_batch = batch
        if self._since_save >= self.save_freq:
            self._since_save = 0
            steps = (self.params or {}).get("steps")
            if steps and batch + 1 >= steps:
                self._save(self._epoch + 1, 0)
            else:
                self._save(self._epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        try:
            self._clear_initial_epoch(self.model)
        finally:
            self._join_writer()

    def wait(self):
        """Wait for the background write (if any); raise its error if it failed."""
        self._join_writer()

    def _implements_train_batch_hooks(self):  # tf_keras asks this before calling batch hooks
        return self.save_freq != "epoch"

    # ---- saving ------------------------------------------------------------------------
    def _save(self, epoch, batch):
        start = time.perf_counter()
        self._join_writer()  # at most one write in flight; raises the last one's error
        model = self.model
        opt = model.optimizer
        step = int(np.asarray(opt.iterations.numpy() if hasattr(opt.iterations, "numpy")
                              else opt.iterations))
        meta = {META_EPOCH: str(epoch), META_BATCH: str(batch), META_STEP: str(step),
                META_WRITER: f"OptStateCheckpoint ({self._generation})"}
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, archive_name(epoch, step))
        if not self.async_write:
            osf.export_state(model, path, include_weights=self.include_weights, metadata=meta)
            self._prune()
            self.blocked_seconds.append(time.perf_counter() - start)
            return
        state = snapshot_state(model, include_weights=self.include_weights, metadata=meta)
        self._thread = threading.Thread(target=self._write, args=(state, path),
                                        name="optstate-checkpoint-writer")
        self._thread.start()
        self.blocked_seconds.append(time.perf_counter() - start)

    def _write(self, state, path):
        # The background thread: any error is kept and raised on the training thread.
        try:
            osf.write(state, path)
            self._prune()
        except BaseException as e:  # noqa: BLE001 - handed over, never lost
            self._error = (e, path)

    def _join_writer(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, path = self._error
            self._error = None
            if hasattr(err, "add_note"):
                err.add_note(f"raised by OptStateCheckpoint's background write of {path}")
            raise err

    def _prune(self):
        if self.keep is None:
            return
        for old in list_archives(self.directory)[self.keep:]:
            try:
                os.remove(old)
            except FileNotFoundError:
                pass

    # ---- continuing from the saved epoch (per generation) ------------------------------
    def _private(self):
        """The private-name table of this generation's converter (a renamed hook fails
        loudly, naming the framework version, instead of resuming at epoch 0)."""
        if self._generation == "tf_keras":
            from .tf_keras import PRIVATE
        else:
            from .keras3 import PRIVATE
        return PRIVATE

    def _set_initial_epoch(self, model, epoch):
        private = self._private()
        if self._generation == "tf_keras":
            # tf_keras's fit asks model._training_state for the first epoch right after
            # on_train_begin (the hook its BackupAndRestore uses); an object of ours answers.
            current = private.get(model, "_training_state")
            if current is not None and not isinstance(current, _ResumeCounters):
                raise UnsupportedError("another callback (BackupAndRestore?) already decides "
                                       "where this fit continues; use one of the two.")
            model._training_state = _ResumeCounters(epoch)
        else:
            # Keras 3's fit starts at model._initial_epoch when set (read after on_train_begin).
            private.get(model, "_initial_epoch")
            model._initial_epoch = epoch
        self._we_set_initial = True

    def _clear_initial_epoch(self, model):
        if not self._we_set_initial:
            return
        self._we_set_initial = False
        if self._generation == "tf_keras":
            if isinstance(getattr(model, "_training_state", None), _ResumeCounters):
                model._training_state = None
        else:
            model._initial_epoch = None


class _ResumeCounters:
    """What tf_keras's fit asks for the epoch and step to start at."""

    def __init__(self, epoch):
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(self, steps_per_epoch, initial_epoch, mode=None):
        # A batch-level archive restarts the epoch it was written in (as Keras 3 does): the
        # data pipeline cannot be fast-forwarded from here.
        return self.epoch, 0


_DOC = """Write full training-state archives during ``fit`` and resume from them by role.

``OptStateCheckpoint(directory, *, save_freq="epoch", keep=3, include_weights=True,
async_write=False, verbose=0)``

- Every epoch (or every ``save_freq`` batches) writes ``ckpt-eEEEE-sSSSSSS.optstate`` (epochs
  completed, optimizer steps) into ``directory``: weights, optimizer state and the epoch in the
  file's metadata, atomically (``optstate_format.export_state``). The newest ``keep`` archives
  are kept (``keep=None``: all).
- At the start of ``fit``, when ``directory`` holds an archive, the newest is imported **by
  role** into the model as it is now (built in another order, a parameterless layer inserted)
  and ``fit`` continues with the saved epoch, as Keras's ``BackupAndRestore`` does. A damaged
  newest archive falls back to the previous one with a warning; the import is all-or-nothing,
  so a model is never half-restored. A model that cannot take the archive raises ``MatchError``
  and is left unchanged. An archive written every ``save_freq`` batches restarts the epoch it
  was written in (``fit`` cannot start mid-epoch), unless it was written at the epoch's end.
- ``async_write=True``: the training thread only copies the variables, a background thread
  writes; one write at a time (a save waits for the previous write to finish).
  ``blocked_seconds`` records how long each save held the training thread. An
  error of a background write is raised at the next save or at the end of training.

>>> # cb = OptStateCheckpoint("ckpts", keep=3)
>>> # model.fit(x, y, epochs=10, callbacks=[cb])   # rerun the same line after a crash
"""


def checkpoint_class(callback_base, generation):
    """``OptStateCheckpoint`` built on ``callback_base`` (the framework's Callback class)."""
    return type("OptStateCheckpoint", (_CheckpointLogic, callback_base),
                {"__doc__": _DOC, "_generation": generation,
                 "__module__": f"optstate_format.converters.{generation}"})


_CLASSES = {}


def __getattr__(name):
    # Built on first use, so importing this module imports neither Keras generation.
    gens = {"Keras3OptStateCheckpoint": "keras3", "TfKerasOptStateCheckpoint": "tf_keras"}
    if name not in gens:
        raise AttributeError(name)
    gen = gens[name]
    if gen not in _CLASSES:
        if gen == "tf_keras":
            import tf_keras
            base = tf_keras.callbacks.Callback
        else:
            import keras
            base = keras.callbacks.Callback
        _CLASSES[gen] = checkpoint_class(base, gen)
    return _CLASSES[gen]
