"""optstate_format: portable optimizer state.

One safetensors file holds an optimizer's slots keyed by canonical weight
paths, with a msgpack header (spec/SPEC.md). The core here is framework-free;
``export_state``/``import_state``/``transfer_state`` dispatch to the converter
for the model's framework, imported only when used.

>>> import optstate_format as osf
>>> sorted(osf.ALGORITHMS)[:3]
['adadelta', 'adafactor', 'adagrad']
"""

from ._check import CheckReport, check
from ._errors import (FormatError, IntegrityError, MatchError, OptStateError, StorageError,
                      UnsupportedError, VersionError)
from ._io import read, read_header, write
from ._match import ImportReport, plan_import
from ._registry import ALGORITHMS
from ._state import LazyTensor, OptimizerInfo, OptimizerState, WeightEntry
from ._versions import CURRENT_VERSION_STR as FORMAT_VERSION
from ._versions import VERSION_TABLE

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS", "CheckReport", "FORMAT_VERSION", "FormatError", "ImportReport",
    "IntegrityError", "LazyTensor", "MatchError", "OptStateError", "OptimizerInfo",
    "OptimizerState", "StorageError", "UnsupportedError", "VERSION_TABLE", "VersionError",
    "WeightEntry", "check", "export_state", "import_state", "plan_import", "read", "read_header",
    "transfer_state", "write",
]


def _converter_for(model):
    """The converter module for ``model``'s framework (imported lazily)."""
    mod = type(model).__module__
    for klass in type(model).__mro__:
        m = klass.__module__ or ""
        if m.startswith("tf_keras"):
            from .converters import tf_keras as conv
            return conv
        if m.startswith("keras"):
            from .converters import keras3 as conv
            return conv
    raise UnsupportedError(f"no converter for models of type {type(model).__name__} (module "
                           f"{mod}); supported: Keras 3 and tf_keras models.")


def export_state(model, path, *, optimizer=None, include_weights=False, metadata=None,
                 fsync=True):
    """Write ``model``'s optimizer state (and weights if asked) to ``path``; return the path.

    The file appears under ``path`` only once complete (written beside it, then
    renamed). ``fsync`` (default True) also waits until the bytes are on the disk,
    so the file survives a power loss or an OS crash; ``fsync=False`` skips that
    wait (a killed process still never leaves a partial file).

    >>> # export_state(model, "run.optstate", include_weights=True)
    """
    return _converter_for(model).export_state(model, path, optimizer=optimizer,
                                              include_weights=include_weights,
                                              metadata=metadata, fsync=fsync)


def import_state(model, path, *, optimizer=None, strict=True, mapping=None,
                 include_weights=False, rollback=True):
    """Load the state in ``path`` into ``model``'s optimizer, matching weights by identity.

    All-or-nothing: on any problem a :class:`MatchError` lists them all and
    nothing is changed. Returns an :class:`ImportReport`. Every check runs before
    the first assignment; ``rollback`` (default True) also keeps the previous
    values until the last assignment succeeds, so even a framework failure or an
    interrupt mid-way leaves everything as it was. The journal keeps a variable
    whose elements are all the same (a fresh optimizer's slots) as that one value,
    and any other as the framework's own buffer: importing into a rebuilt model
    costs no second copy; into an optimizer that holds trained state it costs one
    copy of that state, which ``rollback=False`` saves.

    >>> # report = import_state(rebuilt_model, "run.optstate"); print(report)
    """
    return _converter_for(model).import_state(model, path, optimizer=optimizer, strict=strict,
                                              mapping=mapping, include_weights=include_weights,
                                              rollback=rollback)


def transfer_state(src_model, dst_model, *, strict=True, mapping=None, include_weights=False):
    """Move optimizer state between two live models (no file), matching by identity."""
    state = _converter_for(src_model).extract_state(src_model, include_weights=include_weights,
                                                    materialize=True)
    return _converter_for(dst_model).apply_state(dst_model, state, strict=strict,
                                                 mapping=mapping,
                                                 include_weights=include_weights)
