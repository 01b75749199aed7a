"""The one conductor: export, import and transfer for every framework.

An adapter (``optstate_format.adapter.Adapter``) describes a model and its
optimizer and moves arrays; everything else happens here, once::

    export:   describe -> state (lazy tensors) -> write
    import:   read -> describe target -> plan (match, check, convert) -> journal -> report
    transfer: describe source -> state (copied arrays) -> as import
"""

from __future__ import annotations

import json

import numpy as np

from . import _dtypes, _io, _journal
from ._archive import Sourced, processes
from ._errors import (FormatError, IntegrityError, MatchError, OptStateError, StorageError,
                      UnsupportedError, VersionError)
from ._identity import describe_identities
from ._io import read, write
from ._match import plan_import
from ._state import OptimizerState, Regions, WeightEntry
from .adapter import Adapter, ModelDescription, OptimizerDescription, Variable


def adapter_for(model) -> Adapter:
    """The adapter for ``model``'s framework, found by the top-level module of its classes.

    >>> adapter_for(object())
    Traceback (most recent call last):
    ...
    optstate_format._errors.UnsupportedError: E_UNSUPPORTED: no converter for models of type object (module builtins); supported: keras, tf_keras, torch.
    """
    from .converters import ADAPTERS
    for klass in type(model).__mro__:
        top = (klass.__module__ or "").split(".")[0]
        if top in ADAPTERS:
            return ADAPTERS[top]()
    raise UnsupportedError(f"no converter for models of type {type(model).__name__} (module "
                           f"{type(model).__module__}); supported: "
                           f"{', '.join(sorted(ADAPTERS))}.")


def identities(model: ModelDescription) -> dict:
    """{path: _identity.WeightIdentity} for every weight of a described model the graph
    reaches (spec 8.1, 8.2, 8.2a): a generated local name counts by its role."""
    generated = {w.graph_id for w in model.weights
                 if w.graph_id is not None and w.generated_name}
    ids = describe_identities(model.graph, generated)
    return {w.path: ids[w.graph_id] for w in model.weights
            if w.graph_id is not None and w.graph_id in ids}


def _hints(model: ModelDescription, ids=None) -> list:
    """Identity hints (spec 8.1) for every weight of a described model, in its order."""
    ids = identities(model) if ids is None else ids
    out = []
    for w in model.weights:
        named = w.named and not w.generated_name
        ident = ids.get(w.path)
        out.append({"structural": ident.structural if ident else None,
                    "structural_in": ident.structural_in if ident else None,
                    "name": w.path if named else None,
                    "layer_class": w.layer_class, "weight_name": w.local_name})
    return out


def _check_paths(model: ModelDescription):
    seen = set()
    for w in model.weights:
        if w.path in seen:
            raise UnsupportedError(f"two weights of the model get the canonical path {w.path!r};"
                                   " give the layers distinct names.", path=w.path)
        seen.add(w.path)


def build_state(model: ModelDescription, opt: OptimizerDescription, *, wrap,
                include_weights: bool, all_weights: bool = False, metadata=None, ids=None):
    """An :class:`OptimizerState` from the two descriptions; ``wrap(Variable)`` gives each
    tensor (a lazy read for export, a copy for transfer, the Variable itself for a target).

    ``all_weights`` keeps weights without slots too (a target lists everything it has).
    """
    _check_paths(model)
    by_weight = {id(ws.weight): ws for ws in opt.slots}
    described = {id(w.variable.handle) for w in model.weights}
    stray = [k for k in by_weight if k not in described]
    if stray:
        raise UnsupportedError("the optimizer holds state for a variable that is not part of "
                               "the model; pass the model it was built for.")
    entries = []
    for w, hints in zip(model.weights, _hints(model, ids)):
        ws = by_weight.get(id(w.variable.handle))
        slots = {name: wrap(v) for name, v in (ws.slots.items() if ws else ())}
        # a weight the optimizer holds without state yet (torch creates it at the first step
        # that updates the weight) is kept, slot-less, so an import can pair it (spec 8.4)
        if ws is None and not include_weights and not all_weights:
            continue
        entries.append(WeightEntry(
            path=w.path, shape=tuple(w.variable.shape), dtype=w.variable.dtype,
            trainable=w.trainable, slots=slots, hints=hints,
            value=wrap(w.variable) if include_weights or all_weights else None,
            component=ws.component if ws else 0))
    return OptimizerState(optimizer=opt.info, step=opt.step, weights=entries,
                          globals={k: wrap(v) for k, v in opt.globals.items()},
                          producer=dict(model.producer), metadata=dict(metadata or {}))


def _describe(adapter, model, optimizer, create):
    return adapter.describe_model(model), adapter.describe_optimizer(model, optimizer,
                                                                     create=create)


def source_state(model, *, optimizer=None, include_weights=False, materialize=False,
                 metadata=None) -> OptimizerState:
    """``model``'s optimizer state: lazy reads (export) or copies (``materialize``)."""
    adapter = adapter_for(model)
    desc, opt = _describe(adapter, model, optimizer, create=False)
    if materialize:
        def wrap(v: Variable):
            return np.array(adapter.read(v.handle))
    else:
        def wrap(v: Variable):
            # fetched when the writer reaches it: a view of the framework's buffer if it can
            # (Sourced: a LazyTensor that keeps the handle, for writers of several
            # processes, spec 14.10)
            return Sourced(v.shape, v.dtype, lambda: adapter.read(v.handle), v.handle)
    return build_state(desc, opt, wrap=wrap, include_weights=include_weights,
                       metadata=metadata)


def export_state(model, path, *, optimizer=None, include_weights=False, metadata=None,
                 fsync=True, max_shard_size=None):
    state = source_state(model, optimizer=optimizer, include_weights=include_weights,
                         metadata=metadata)
    return write(state, path, fsync=fsync, max_shard_size=max_shard_size)


def apply_state(model, state: OptimizerState, *, optimizer=None, strict=True, mapping=None,
                include_weights=False, rollback=True, resize=None):
    """Plan ``state`` against ``model`` (every check), then assign it all or nothing."""
    return _apply(model, state, optimizer=optimizer, strict=strict, mapping=mapping,
                  include_weights=include_weights, rollback=rollback, resize=resize,
                  owned=False)


def _plan(adapter, model, state, *, optimizer, strict, mapping, include_weights, resize):
    """Describe the target and plan ``state`` against it: (report, assignments)."""
    desc, opt = _describe(adapter, model, optimizer, create=True)
    ids = identities(desc)
    target = build_state(desc, opt, wrap=lambda v: v, include_weights=False, all_weights=True,
                         ids=ids)
    target.producer["framework"] = getattr(adapter, "framework", "")
    return plan_import(state, target, mapping=mapping, strict=strict,
                       include_weights=include_weights, resize=resize,
                       identities=ids, read=lambda v: adapter.read(v.handle))


def _apply(model, state, *, optimizer, strict, mapping, include_weights, rollback, resize,
           owned):
    """``apply_state``; ``owned``: ``state``'s arrays are ours alone (read or copied here,
    dropped afterwards), so an adapter may adopt them rather than copy them."""
    adapter = adapter_for(model)
    report, assignments = _plan(adapter, model, state, optimizer=optimizer, strict=strict,
                                mapping=mapping, include_weights=include_weights, resize=resize)
    report.assigned = _journal.apply(adapter, assignments, rollback=rollback, owned=owned)
    return report


def import_state(model, path, *, optimizer=None, strict=True, mapping=None,
                 include_weights=False, rollback=True, resize=None):
    procs = processes()
    if procs is not None and getattr(procs, "collective_import", False):
        return _import_collective(model, path, procs, optimizer=optimizer, strict=strict,
                                  mapping=mapping, include_weights=include_weights,
                                  rollback=rollback, resize=resize)
    state = read(path, verify=True)
    return _apply(model, state, optimizer=optimizer, strict=strict, mapping=mapping,
                  include_weights=include_weights, rollback=rollback, resize=resize,
                  owned=True)


# ----------------------------------------------------------------------------- many processes

_ERRORS = {cls.__name__: cls for cls in (OptStateError, FormatError, IntegrityError,
                                         MatchError, StorageError, UnsupportedError,
                                         VersionError)}


def _told(e) -> dict:
    """What a process tells the others of its failure (bounded: a gathered row is 8 KiB)."""
    def cut(text, n):
        return None if text is None else str(text)[:n]
    if isinstance(e, OptStateError):
        return {"class": type(e).__name__, "code": e.code, "msg": cut(e.msg, 600),
                "key": cut(e.key, 200), "path": cut(e.path, 200)}
    return {"class": "OptStateError", "code": "E_ASSIGN",
            "msg": cut(f"{type(e).__name__}: {e}", 600), "key": None, "path": None}


def _agree(procs, ident, failure, after=False, rollback=True):
    """Every process's outcome of one phase (reading and planning; or, ``after``, the
    assignments, rolled back on failure unless ``rollback`` is False), gathered; raise if any
    process failed. ``failure``: this process's own exception (re-raised as it is), or
    None."""
    mine = {"ident": ident, "error": _told(failure) if failure is not None else None}
    rows = [json.loads(r) for r in procs.gather(json.dumps(mine))]
    if failure is not None:
        raise failure
    for i, row in enumerate(rows):
        e = row["error"]
        if e:
            cls = _ERRORS.get(e["class"], OptStateError)
            said = (f"process {i} of {procs.count} failed ({e['msg']}); " +
                    ("no process assigned anything." if not after else
                     "every process restores what it assigned." if rollback else
                     "rollback=False: every process keeps what it assigned."))
            err = cls(said, code=e["code"], path=e["path"])
            err.key = e["key"]
            raise err
    idents = sorted({str(row["ident"]) for row in rows})
    if len(idents) > 1:
        raise FormatError(f"the processes opened different exports ({', '.join(idents)}): the "
                          "file was replaced during the import. Nothing was assigned; import "
                          "again.", code="E_ARCHIVE_MISMATCH")


def _import_collective(model, path, procs, *, optimizer, strict, mapping, include_weights,
                       rollback, resize):
    """``import_state`` called by every process of a job (spec 14.11): each process reads
    only the regions its devices hold of each variable its adapter splits
    (``local_boxes``), and whole tensors otherwise; the processes agree before the first
    assignment (a file damaged for one fails all) and after the last (an assignment that
    fails in one rolls every process back)."""
    adapter = adapter_for(model)
    boxes_of = getattr(adapter, "local_boxes", None)
    failure, ident, report, assignments = None, None, None, []
    try:
        with _io.Lazy(path) as lazy:
            ident = lazy.ident
            state = lazy.state()
            report, planned = _plan(adapter, model, state, optimizer=optimizer, strict=strict,
                                    mapping=mapping, include_weights=include_weights,
                                    resize=resize)
            wanted = {}
            for var, value in planned:
                if isinstance(value, _io.Stored):
                    boxes = boxes_of(var.handle) if boxes_of is not None else None
                    if boxes is not None and wanted.get(value.key, []) is not None:
                        wanted[value.key] = sorted(set(wanted.get(value.key, [])) | set(boxes))
                    else:
                        wanted[value.key] = None
            got = lazy.read(wanted)
            for var, value in planned:
                if isinstance(value, _io.Stored):
                    value_read = got[value.key]
                    if value.note is not None:
                        _note_read_nonfinite(report, value_read, value.note)
                    value = value_read
                assignments.append((var, value))
            report.bytes_read = lazy.bytes_read
    except Exception as e:  # noqa: BLE001 - told to the others, then raised here
        failure = e
    _agree(procs, ident, failure)
    report.assigned = _journal.apply(adapter, assignments, rollback=rollback, owned=True,
                                     agree=lambda failure: _agree(procs, ident, failure, True,
                                                                  rollback))
    return report


def _note_read_nonfinite(report, value, what):
    arrays = value.boxes.values() if isinstance(value, Regions) else (value,)
    bad = sum(_dtypes.count_nonfinite(a) for a in arrays)
    if bad:
        where = " in this process's regions" if isinstance(value, Regions) else ""
        report.notes.append(f"{what}: {bad} NaN/Inf value(s){where}, imported as they are")


def transfer_state(src_model, dst_model, *, src_optimizer=None, optimizer=None, strict=True,
                   mapping=None, include_weights=False, rollback=True, resize=None):
    state = source_state(src_model, optimizer=src_optimizer, include_weights=include_weights,
                         materialize=True)
    return _apply(dst_model, state, optimizer=optimizer, strict=strict, mapping=mapping,
                  include_weights=include_weights, rollback=rollback, resize=resize,
                  owned=True)
