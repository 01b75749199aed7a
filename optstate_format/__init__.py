"""optstate_format: portable optimizer state.

One safetensors file holds an optimizer's slots keyed by canonical weight
paths, with a msgpack header (spec/SPEC.md). The core here is framework-free;
``export_state``/``import_state``/``transfer_state`` are conducted by the core
(``_api``) through the adapter of the model's framework (``adapter.Adapter``),
imported only when a model of that framework is seen.

>>> import optstate_format as osf
>>> osf.ALGORITHMS["adam"].slots[0].name
'm'
"""

from . import _api, _versions
from ._check import CheckReport, check
from ._errors import (FormatError, IntegrityError, MatchError, OptStateError, StorageError,
                      UnsupportedError, VersionError)
from ._io import read, read_header, write
from ._match import ImportReport, plan_import
from ._registry import ALGORITHMS
from ._state import LazyTensor, OptimizerInfo, OptimizerState, WeightEntry
from ._versions import CURRENT_VERSION_STR as FORMAT_VERSION
from ._versions import VERSION_TABLE
from .adapter import Adapter

__version__ = _versions.LIBRARY_VERSION

__all__ = [
    "ALGORITHMS", "Adapter", "CheckReport", "FORMAT_VERSION", "FormatError", "ImportReport",
    "IntegrityError", "LazyTensor", "MatchError", "OptStateError", "OptimizerInfo",
    "OptimizerState", "StorageError", "UnsupportedError", "VERSION_TABLE", "VersionError",
    "WeightEntry", "check", "export_state", "import_state", "plan_import", "read", "read_header",
    "transfer_state", "write",
]


def export_state(model, path, *, optimizer=None, include_weights=False, metadata=None,
                 fsync=True, max_shard_size=None):
    """Write ``model``'s optimizer state (and weights if asked) to ``path``; return the path.

    The file appears under ``path`` only once complete (written beside it, then
    renamed). ``fsync`` (default True) also waits until the bytes are on the disk,
    so the file survives a power loss or an OS crash; ``fsync=False`` skips that
    wait (a killed process still never leaves a partial file). ``optimizer`` is
    required where the model has none attached (a torch ``nn.Module``).

    ``max_shard_size`` (bytes of tensor data per shard) writes a sharded archive instead: a
    folder at ``path`` holding an index and shard files, committed as a whole (spec section
    14). :func:`import_state`, :func:`read` and :func:`check` accept the folder. In a
    ``jax.distributed`` job of several processes, every process calls this with the same
    path and ``max_shard_size``: each writes the pieces its devices hold, process 0 commits
    the index once all have written, and the call returns everywhere after the commit.

    >>> # export_state(model, "run.optstate", include_weights=True)
    >>> # export_state(model, "run.optstate", max_shard_size=2 * 1024 ** 3)  # a folder
    """
    return _api.export_state(model, path, optimizer=optimizer, include_weights=include_weights,
                             metadata=metadata, fsync=fsync, max_shard_size=max_shard_size)


def import_state(model, path, *, optimizer=None, strict=True, mapping=None,
                 include_weights=False, rollback=True, resize=None):
    """Load the state in ``path`` into ``model``'s optimizer, matching weights by identity.

    ``path`` is an optstate file or a sharded archive folder (spec section 14).

    All-or-nothing: on any problem a :class:`MatchError` lists them all and
    nothing is changed. Returns an :class:`ImportReport`. Every check runs before
    the first assignment; ``rollback`` (default True) also keeps the previous
    values until the last assignment succeeds, so even a framework failure or an
    interrupt mid-way leaves everything as it was. The journal keeps a variable
    whose elements are all the same (a fresh optimizer's slots) as that one value,
    and any other as the framework's own buffer: importing into a rebuilt model
    costs no second copy; into an optimizer that holds trained state it costs one
    copy of that state, which ``rollback=False`` saves.

    ``resize="overlap"`` (model surgery, never the default): a weight paired by identity
    whose shape changed (a grown vocabulary, a longer context, more classes) imports the
    region both shapes share; the rest keeps the target's fresh value; each such weight is
    listed in ``report.resized``. Without it a changed shape is refused (E_MATCH_SHAPE).

    >>> # report = import_state(rebuilt_model, "run.optstate"); print(report)
    """
    return _api.import_state(model, path, optimizer=optimizer, strict=strict, mapping=mapping,
                             include_weights=include_weights, rollback=rollback, resize=resize)


def transfer_state(src_model, dst_model, *, src_optimizer=None, optimizer=None, strict=True,
                   mapping=None, include_weights=False, rollback=True, resize=None):
    """Move optimizer state between two live models (no file), matching by identity.

    The source may be of another framework generation than the target; checks,
    journal and report are those of :func:`import_state` (``resize`` included).

    >>> # transfer_state(old_model, rebuilt_model)
    """
    return _api.transfer_state(src_model, dst_model, src_optimizer=src_optimizer,
                               optimizer=optimizer, strict=strict, mapping=mapping,
                               include_weights=include_weights, rollback=rollback,
                               resize=resize)
