"""PyTorch adapter: ``torch.nn.Module`` weights and ``torch.optim`` state, by role.

torch keys optimizer state by the parameter's position in ``param_groups``
(``Optimizer.state_dict()``, ``load_state_dict``); this adapter describes each
parameter by its canonical path and identity instead (spec, "Appendix: PyTorch"),
names each state entry through one table (``_torch_tables.TORCH_OPTIMIZERS``:
torch's state keys -> the registry's canonical slots) and moves arrays in and
out. The core (``optstate_format._api``) matches, validates, journals and
reports; use it through the top-level functions:

>>> # import optstate_format as osf
>>> # osf.export_state(model, "run.optstate", optimizer=opt)        # or (opt, lr_scheduler)
>>> # osf.import_state(rebuilt_model, "run.optstate", optimizer=new_opt)
>>> # osf.transfer_state(model, rebuilt_model, src_optimizer=opt, optimizer=new_opt)

Also here: converting files torch wrote by position (``from_state_dict``,
``convert_optimizer_pt``, ``from_dcp_state_dict``) and an LR scheduler's state
as data (``restore_scheduler``).
"""

from __future__ import annotations

import re
import sys
import threading
import warnings

import numpy as np
import torch
from torch import nn

from optstate_format import _api, _dtypes, _registry
from optstate_format._errors import FormatError, MatchError, UnsupportedError
from optstate_format._identity import Graph, Layer, Node
from optstate_format._io import read, write
from optstate_format._paths import NAME_RE, sanitize_segment
from optstate_format._state import OptimizerInfo, OptimizerState
from optstate_format.adapter import (ABSENT, BaseAdapter, ModelDescription, ModelWeight,
                                     OptimizerDescription, Variable, WeightSlots)

from ._private import PrivateAPI
from ._torch_tables import LBFGS_REASON, TORCH_OPTIMIZERS, StateKey

# The private torch names this converter reads beyond nn.Module's own storage.
PRIVATE = PrivateAPI("torch", torch.__version__, ">=2.1", attrs={
    "_orig_mod": "the module torch.compile wrapped (OptimizedModule)"})

try:  # the dtype torch.optim gives scalar state (float64 when that is the default dtype)
    from torch.optim.optimizer import _get_scalar_dtype
except ImportError:  # pragma: no cover - older torch
    def _get_scalar_dtype(is_fused=None):
        if is_fused:
            return torch.float32
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32

# ---- dtypes ------------------------------------------------------------------------------------
_TORCH_DTYPES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
    torch.bfloat16: "bfloat16", torch.int64: "int64", torch.int32: "int32",
    torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
}
for _name in ("uint16", "uint32", "uint64"):  # torch >= 2.3
    if hasattr(torch, _name):
        _TORCH_DTYPES[getattr(torch, _name)] = _name


def dtype_name(dtype) -> str:
    """Spec dtype name (section 6) of a torch dtype.

    >>> dtype_name(torch.bfloat16)
    'bfloat16'
    """
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise UnsupportedError(f"torch dtype {dtype} is not in the optstate dtype table; "
                               f"supported: {sorted(set(_TORCH_DTYPES.values()))}.") from None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's values as numpy; a view of its memory when it is on the CPU."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_dtypes.storage_dtype("bfloat16"))
    return t.numpy()


def _state_tensor(value, shape, dtype, device, *, adopt: bool) -> torch.Tensor:
    """A new state tensor of ``shape``, ``dtype`` and ``device`` holding ``value``.

    ``adopt``: ``value`` is given up by the core, so for a CPU tensor of its dtype the result
    is a tensor over its memory (no copy); otherwise, and for any other device or dtype, a
    copy."""
    src = _from_numpy(value).reshape(shape)
    arr = np.asarray(value)
    if (adopt and torch.device(device).type == "cpu" and src.dtype == dtype
            and arr.flags.writeable and arr.flags.c_contiguous):
        return src
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    with torch.no_grad():
        out.copy_(src)
    return out


def _from_numpy(value) -> torch.Tensor:
    """A tensor over ``value``'s memory (only ever read: the source of a ``copy_``)."""
    arr = np.asarray(value)
    bf16 = arr.dtype == _dtypes.storage_dtype("bfloat16") and arr.dtype.kind != "u"
    if bf16:
        arr = arr.view(np.int16)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    with warnings.catch_warnings():  # the array may be read-only (a caller's): torch only reads it
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if bf16 else t


def _builtin(cls):
    """The table entry for a torch.optim class (exactly that class: a subclass may change the
    update rule, so it is written in the generic form), else None."""
    if not (cls.__module__ or "").startswith("torch.optim"):
        return None
    return TORCH_OPTIMIZERS.get(cls.__name__)


# ---- handles -----------------------------------------------------------------------------------
class _StateSlot:
    """One entry of ``optimizer.state[param]``, present or (lazily) not yet created.

    ``pre`` is the set of keys the parameter's state had when the import described it
    (None: no state at all); entries outside it snapshot as ABSENT and are removed again
    by restoring ABSENT.
    """

    __slots__ = ("state", "param", "spec", "group", "companions", "pre", "shape", "dtype",
                 "groups")

    def __init__(self, state, param, spec, group, companions, groups=()):
        self.state, self.param, self.spec, self.group = state, param, spec, group
        self.groups = groups  # all the optimizer's param_groups: the order of its state
        self.companions = companions  # the StateKeys torch creates together with this one
        entry = state.get(param)
        self.pre = None if entry is None else frozenset(entry)
        value = entry.get(spec.key) if entry is not None else None
        if isinstance(value, torch.Tensor):
            self.shape = _canonical_shape(spec.layout, tuple(value.shape))
            self.dtype = dtype_name(value.dtype)
        elif value is not None:
            self.shape, self.dtype = (), "int64" if isinstance(value, int) else "float64"
        else:
            self.shape = _canonical_shape(spec.layout, _torch_shape(spec.layout, param))
            self.dtype = _created_dtype(spec, group, param)

    @property
    def existed(self):
        return self.pre is not None and self.spec.key in self.pre


def _torch_shape(layout, p):
    s = tuple(p.shape)
    if layout == "scalar":
        return ()
    if layout == "rows":
        return s[:-1] + (1,)
    if layout == "cols":
        return s[:-2] + (1,) + s[-1:]
    return s


def _canonical_shape(layout, torch_shape):
    s = tuple(torch_shape)
    if layout == "rows" and len(s) >= 2:
        return s[:-1]
    if layout == "cols" and len(s) >= 2:
        return s[:-2] + s[-1:]
    return s


def _scalar_dtype(spec, group):
    """torch.optim's dtype for scalar state: float32, or float64 when that is the default
    dtype; a fused optimizer's step is always float32."""
    fused = bool(group.get("fused")) and spec.init.startswith("step:")
    return _get_scalar_dtype(is_fused=fused or None)


def _created_dtype(spec, group, p):
    if spec.python is int:
        return "int64"
    if spec.init.startswith(("step:", "one:", "lr:")):
        return dtype_name(_scalar_dtype(spec, group))
    return dtype_name(p.dtype)


def _create(spec, group, p):
    """The tensor (or number) torch itself creates for ``spec`` when it initialises ``p``."""
    if spec.python is int:
        return 0
    kind, _, where = spec.init.partition(":")
    if where:
        fused = bool(group.get("fused"))
        device = p.device if where == "param" or (
            where == "capturable" and (group.get("capturable") or fused)) else "cpu"
        dtype = _scalar_dtype(spec, group)
        value = {"step": 0.0, "one": 1.0}.get(kind)
        if kind == "lr":
            value = float(group["lr"])
        return torch.tensor(value, dtype=dtype, device=device)
    shape = _torch_shape(spec.layout, p)
    if kind == "lr":
        return torch.full(shape, float(group["lr"]), dtype=p.dtype, device=p.device)
    if kind == "initial_accumulator_value":
        return torch.full_like(p, group.get("initial_accumulator_value", 0.0),
                               memory_format=torch.preserve_format)
    if shape == tuple(p.shape):
        return torch.zeros_like(p, memory_format=torch.preserve_format)
    return p.new_zeros(shape)


class _Deferred:
    """A companion state tensor not created yet (see ``TorchAdapter.finish``); never left in
    an optimizer's state once an import returns."""

    __slots__ = ("spec", "group", "param")

    def __init__(self, spec, group, param):
        self.spec, self.group, self.param = spec, group, param


class _GroupValue:
    """A value of a parameter group that the optimizer changes as it runs (``lr``: LR
    schedulers set it every step). ``pre`` is the group's value when described."""

    __slots__ = ("group", "key", "pre", "shape", "dtype")

    def __init__(self, group, key):
        self.group, self.key, self.pre = group, key, group[key]
        if isinstance(self.pre, torch.Tensor):
            self.shape, self.dtype = tuple(self.pre.shape), dtype_name(self.pre.dtype)
        else:
            self.shape, self.dtype = (), "float64"


# ---- the adapter -------------------------------------------------------------------------------
class TorchAdapter(BaseAdapter):
    """Describes an ``nn.Module`` and a ``torch.optim`` optimizer; moves arrays.

    Handles: a model weight's handle is the ``Parameter`` (or buffer) itself; optimizer state
    entries are ``_StateSlot``; a group's learning rate is ``_GroupValue``.
    """

    framework = "torch"

    def __init__(self):
        self._lock = threading.Lock()
        self._deferred = []  # (state entry, key, _Deferred) of companions not yet created
        # id(optimizer.state) -> (that state, its param_groups, params given a new entry)
        self._created = {}

    # ---- model ----------------------------------------------------------------------------
    def describe_model(self, model) -> ModelDescription:
        """Every parameter and persistent buffer of ``model``, with its canonical path
        (attribute names joined by ``/``), whether every name on it was written by a user,
        and the graph its structural identity comes from (spec, Appendix: PyTorch)."""
        if not isinstance(model, nn.Module):
            raise UnsupportedError(f"expected a torch.nn.Module; received "
                                   f"{type(model).__name__}.")
        model = unwrap(model)
        walk = _Walk()
        graph = walk.graph(model, [], True)
        return ModelDescription(walk.weights, graph, producer={
            "framework": "torch", "framework_version": torch.__version__.split("+")[0]})

    # ---- optimizer --------------------------------------------------------------------------
    def describe_optimizer(self, model, optimizer, *, create: bool) -> OptimizerDescription:
        """``optimizer``'s state per parameter, under the registry's canonical slot names.

        ``optimizer`` is a ``torch.optim.Optimizer`` or ``(optimizer, lr_scheduler)``; the
        scheduler's ``state_dict()`` is then recorded as data (restore it with
        :func:`restore_scheduler`). With ``create=True`` state torch has not created yet
        (it appears at the first step) is described too; it is created when assigned.
        """
        opt, scheduler = _split(optimizer)
        view = _OptimizerView.of(opt)
        return self._describe_view(view, scheduler, create)

    def _describe_view(self, view, scheduler, create):
        spec = _builtin(view.cls)
        if view.cls.__name__ == "LBFGS" and (view.cls.__module__ or "").startswith("torch.optim"):
            raise UnsupportedError(LBFGS_REASON)
        cls_name = view.cls.__name__
        alg = spec.algorithm if spec else f"{_registry.GENERIC_PREFIX}{cls_name}"
        slots, steps = [], []
        for gi, group in enumerate(view.param_groups):
            for p in group["params"]:
                described = self._param_slots(view, spec, group, p, create)
                for name, var in described.items():
                    if name == "step" and var.handle.existed:
                        steps.append(self.read(var.handle))
                slots.append(WeightSlots(weight=p, slots=described, component=gi))
        groups = view.param_groups
        hyper = [_data(_group_hyper(g)) for g in groups]
        lrs = [_lr_info(g) for g in groups]
        sched = _scheduler_info(scheduler) if scheduler is not None else None
        module = view.cls.__module__
        if len(groups) == 1:
            info = OptimizerInfo(algorithm=alg, class_name=cls_name, module=module,
                                 hyperparameters=hyper[0], learning_rate=sched or lrs[0])
            globals_ = {"learning_rate": _group_var(groups[0])} if "lr" in groups[0] else {}
        else:
            comps = [{"algorithm": alg, "class_name": cls_name, "module": module,
                      "hyperparameters": h, "learning_rate": lr} for h, lr in zip(hyper, lrs)]
            defaults = {k: v for k, v in view.defaults.items() if k != "lr"}
            info = OptimizerInfo(algorithm=_registry.MULTI, class_name=cls_name, module=module,
                                 hyperparameters=_data(defaults), learning_rate=sched or {},
                                 components=comps)
            globals_ = {f"component.{i}.learning_rate": _group_var(g)
                        for i, g in enumerate(groups) if "lr" in g}
        step = int(max((float(np.asarray(s)) for s in steps), default=0))
        return OptimizerDescription(info=info, step=step, slots=slots, globals=globals_)

    def _param_slots(self, view, spec, group, p, create):
        entry = view.state.get(p)
        out = {}
        if spec is None:  # generic: every entry the optimizer keeps, named by its key
            for key, value in sorted((entry or {}).items(), key=lambda kv: str(kv[0])):
                if not isinstance(value, (torch.Tensor, bool, int, float)) or (
                        isinstance(value, torch.Tensor) and value.is_sparse):
                    raise UnsupportedError(
                        f"{view.cls.__name__} keeps {key!r} = {type(value).__name__} for a "
                        "parameter; only tensors and numbers can be written.")
                py = None if isinstance(value, torch.Tensor) else type(value)
                sk = StateKey(str(key), _generic_name(key), "like", "none", python=py)
                h = _StateSlot(view.state, p, sk, group, ())
                out[sk.slot] = Variable(h, h.shape, h.dtype)
            return out
        expected = [k for k in spec.keys if k.applies(group, p)]
        if entry:
            unknown = sorted(str(k) for k in entry if k not in {s.key for s in spec.keys})
            if unknown:
                raise UnsupportedError(
                    f"torch.optim.{view.cls.__name__} holds state {unknown} for a parameter, "
                    "which the converter's table does not know (a subclass or a hook adding "
                    "state?); nothing is written rather than dropping it.")
        for sk in spec.keys:
            present = entry is not None and sk.key in entry
            if present and entry[sk.key] is None:
                continue
            if present or (create and sk in expected):
                h = _StateSlot(view.state, p, sk, group, tuple(expected), view.param_groups)
                out[sk.slot] = Variable(h, h.shape, h.dtype, exists=h.existed)
        return out

    # ---- arrays -----------------------------------------------------------------------------
    def read(self, handle) -> np.ndarray:
        if isinstance(handle, torch.Tensor):
            return _to_numpy(handle)
        if isinstance(handle, _StateSlot):
            entry = handle.state.get(handle.param)
            value = None if entry is None else entry.get(handle.spec.key)
            if value is None or isinstance(value, _Deferred):
                # not created yet (a fresh optimizer; the core reads it to keep the target's
                # own value outside a resized region): the value torch will start from
                value = _create(handle.spec, handle.group, handle.param)
            if isinstance(value, torch.Tensor):
                if handle.spec.layout in ("rows", "cols") and value.dim() >= 2:
                    value = value.squeeze(-1 if handle.spec.layout == "rows" else -2)
                return _to_numpy(value)
            return np.array(value, dtype=_dtypes.storage_dtype(handle.dtype))
        if isinstance(handle, _GroupValue):
            value = handle.group[handle.key]
            if isinstance(value, torch.Tensor):
                return _to_numpy(value)
            return np.array(float(value), dtype=np.float64)
        raise TypeError(f"not a torch adapter handle: {type(handle).__name__}")

    def assign(self, handle, value) -> None:
        self._put(handle, value, adopt=False)

    def adopt(self, handle, value) -> None:
        """``assign``, keeping ``value``'s memory as the state tensor's when it can (the core
        gives the array up): a CPU state tensor of the array's dtype becomes a tensor over it."""
        self._put(handle, value, adopt=True)

    def _put(self, handle, value, *, adopt) -> None:
        if isinstance(handle, torch.Tensor):
            with torch.no_grad():
                handle.copy_(_from_numpy(value).reshape(handle.shape))
            return
        if isinstance(handle, _StateSlot):
            entry = handle.state.get(handle.param)
            if entry is None:
                entry = handle.state[handle.param] = {}
                with self._lock:
                    self._created.setdefault(id(handle.state), (
                        handle.state, handle.groups, []))[2].append(handle.param)
            key = handle.spec.key
            if key not in entry:
                # torch initialises a parameter's state all at once and only when it has none:
                # every entry it would create is created (its own initial values), so a
                # partial import never leaves state torch cannot step with. A tensor shaped
                # like the parameter waits as a _Deferred until finish(): the import usually
                # assigns it next, and zeros made now would be thrown away. Entries go in in
                # torch's creation order (the order of state_dict() and of torch.save), the
                # assigned one included: None holds its place until it is set below.
                for sk in handle.companions or (handle.spec,):
                    if sk.key not in entry:
                        entry[sk.key] = (None if sk is handle.spec
                                         else self._companion(entry, sk, handle))
                spec = handle.spec
                if spec.python is int or ":" in spec.init:  # a number or a scalar: its type
                    entry[key] = _create(spec, handle.group, handle.param)
            current = entry.get(key)
            if current is None or isinstance(current, _Deferred):
                # a tensor shaped like the parameter: made from the value
                p = handle.param
                entry[key] = _state_tensor(value, _torch_shape(handle.spec.layout, p), p.dtype,
                                           p.device, adopt=adopt)
            elif isinstance(current, torch.Tensor):
                # a new tensor, as load_state_dict puts in, never a write into the old one:
                # the old one is then the rollback snapshot, kept without a copy
                entry[key] = _state_tensor(value, current.shape, current.dtype, current.device,
                                           adopt=adopt)
            else:
                py = handle.spec.python or type(current)
                entry[key] = py(np.asarray(value).item())
            return
        if isinstance(handle, _GroupValue):
            current = handle.group[handle.key]
            if isinstance(current, torch.Tensor):
                with torch.no_grad():
                    current.copy_(_from_numpy(value).reshape(current.shape))
            else:
                v = float(np.asarray(value))
                same = isinstance(handle.pre, (int, float)) and float(handle.pre) == v
                handle.group[handle.key] = handle.pre if same else v
            return
        raise TypeError(f"not a torch adapter handle: {type(handle).__name__}")

    def _companion(self, entry, sk, handle):
        if sk.init == "none":
            return None
        if sk.python is int or ":" in sk.init:  # a number or a scalar tensor: made now
            return _create(sk, handle.group, handle.param)
        marker = _Deferred(sk, handle.group, handle.param)
        with self._lock:
            self._deferred.append((entry, sk.key, marker))
        return marker

    def finish(self) -> None:
        """Called by the core once an import's assignments are over (done, undone or, with
        ``rollback=False``, broken off): every companion still waiting becomes the tensor
        torch itself would have created. Those a rollback removed are gone already."""
        with self._lock:
            waiting, self._deferred = self._deferred, []
            created, self._created = list(self._created.values()), {}
        for entry, key, marker in waiting:
            if entry.get(key) is marker:
                entry[key] = _create(marker.spec, marker.group, marker.param)
        for state, groups, params in created:
            new = {id(p) for p in params}
            if any(id(k) in new for k in state):  # a rolled back import leaves the order alone
                _in_parameter_order(state, groups)

    def snapshot(self, handle):
        if isinstance(handle, _StateSlot):
            if not handle.existed:
                return ABSENT
            current = handle.state[handle.param][handle.spec.key]
            if isinstance(current, torch.Tensor) and current.device.type == "cpu":
                return current  # assign and adopt replace it, never write into it
        return np.array(self.read(handle))

    def restore(self, handle, snapshot) -> None:
        if isinstance(snapshot, torch.Tensor):
            handle.state[handle.param][handle.spec.key] = snapshot
            return
        if snapshot is ABSENT:
            entry = handle.state.get(handle.param)
            if entry is None:
                return
            if handle.pre is None:
                del handle.state[handle.param]
            else:
                for k in [k for k in entry if k not in handle.pre]:
                    del entry[k]
            return
        self.assign(handle, snapshot)


ADAPTER = TorchAdapter()


def _in_parameter_order(state, groups):
    """Put ``optimizer.state``'s entries in the order of its parameters, as torch's steps
    create them (an import creates them in the file's order): ``state_dict()`` then numbers
    and lists them as in the uninterrupted run. The entries themselves are not touched."""
    order = {id(p): i for i, p in enumerate(p for g in groups for p in g["params"])}
    items = list(state.items())
    ranked = sorted(items, key=lambda kv: order.get(id(kv[0]), len(order)))
    if [id(k) for k, _ in ranked] != [id(k) for k, _ in items]:
        state.clear()
        state.update(ranked)


def _split(optimizer):
    if optimizer is None:
        raise UnsupportedError(
            "an nn.Module has no optimizer attached: pass optimizer=<your torch.optim "
            "optimizer> (or optimizer=(optimizer, lr_scheduler) to record the scheduler).")
    scheduler = None
    if isinstance(optimizer, tuple) and len(optimizer) == 2:
        optimizer, scheduler = optimizer
    if not isinstance(optimizer, (torch.optim.Optimizer, _OptimizerView)):
        raise UnsupportedError(f"optimizer= must be a torch.optim.Optimizer; received "
                               f"{type(optimizer).__name__}.")
    return optimizer, scheduler


def _generic_name(key):
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(key).lstrip("_"))[:128] or "state"
    assert NAME_RE.match(name)
    return name


def _group_hyper(group):
    return {k: v for k, v in group.items() if k not in ("params", "param_names", "lr")}


def _group_var(group):
    h = _GroupValue(group, "lr")
    return Variable(h, h.shape, h.dtype)


def _lr_info(group):
    lr = group.get("lr")
    if lr is None:
        return {}
    return {"kind": "constant", "value": float(lr)}


def _data(obj, omitted=None, where=""):
    """A msgpack-able copy of ``obj``; tensors become numbers or lists. Anything else is
    left out (its key added to ``omitted``) when ``omitted`` is a list, else written as
    its repr (informative hyperparameters only)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and omitted is None:
        return obj.detach().cpu().tolist()
    if isinstance(obj, (torch.dtype, torch.device)) and omitted is None:
        return str(obj)
    if isinstance(obj, (list, tuple)):
        out = [_data(v, omitted, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if omitted is None or _NOT_DATA not in out else _NOT_DATA
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                if omitted is None:
                    k = repr(k)
                else:
                    omitted.append(f"{where}{k!r}")
                    continue
            d = _data(v, omitted, f"{where}.{k}" if where else str(k))
            if d is _NOT_DATA:
                omitted.append(f"{where}.{k}" if where else str(k))
                continue
            out[str(k)] = d
        return out
    if omitted is None:
        return repr(obj)
    return _NOT_DATA


_NOT_DATA = object()


def _scheduler_info(scheduler):
    if not hasattr(scheduler, "state_dict"):
        raise UnsupportedError(f"the second item of optimizer=(optimizer, scheduler) must be "
                               f"an LR scheduler; received {type(scheduler).__name__}.")
    omitted = []
    config = _data(scheduler.state_dict(), omitted)
    if any(isinstance(k, int) for k in scheduler.state_dict()):
        raise UnsupportedError("the scheduler's state_dict has non-string keys.")
    return {"kind": "schedule", "class_name": type(scheduler).__name__,
            "module": type(scheduler).__module__, "config": config, "omitted": omitted}


# ---- model walk --------------------------------------------------------------------------------
def unwrap(model):
    """The module a training wrapper runs: ``nn.DataParallel`` and ``DistributedDataParallel``
    (``.module``), ``torch.compile`` (``._orig_mod``), nested in any order. They hold no weight
    and play no role of their own, so their names (``module.``, ``_orig_mod.``) are in no
    path: state exported under DDP imports into the plain model, the compiled one, and back.

    >>> unwrap(nn.DataParallel(nn.Linear(2, 2)))
    Linear(in_features=2, out_features=2, bias=True)
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif _is_compiled(model):
            model = PRIVATE.get(model, "_orig_mod")
        else:
            return model


def _is_compiled(model):
    frame = sys.modules.get("torch._dynamo.eval_frame")  # imported by torch.compile itself
    return frame is not None and isinstance(model, frame.OptimizedModule)


def _owns_weights(module) -> bool:
    """Whether the module (or a submodule) holds a parameter or a persistent buffer."""
    for m in module.modules():
        if any(p is not None for p in m._parameters.values()):
            return True
        if any(b is not None and k not in m._non_persistent_buffers_set
               for k, b in m._buffers.items()):
            return True
    return False


class _Walk:
    """Builds the identity graph and the weight list of a module tree (spec, Appendix:
    PyTorch). A parameter reached twice (tied weights) is one weight, at its first path."""

    def __init__(self):
        self.weights = []
        self.seen = {}

    def own(self, module, path, named):
        """(local name, graph id) for the tensors ``module`` holds itself."""
        out = []
        items = [(k, p, True) for k, p in module._parameters.items()]
        items += [(k, b, False) for k, b in module._buffers.items()
                  if k not in module._non_persistent_buffers_set]
        for key, t, is_param in items:
            if t is None or id(t) in self.seen:
                continue
            local = sanitize_segment(key)
            if isinstance(t, nn.parameter.UninitializedTensorMixin):
                where = "/".join(path + [local])
                raise UnsupportedError(
                    f"{where} belongs to a lazy {type(module).__name__} that has not run yet: it "
                    "has no shape, so no state can be matched to it. Run one forward pass "
                    "(e.g. on a dummy batch) before exporting or importing.", path=where)
            wid = len(self.weights)
            self.seen[id(t)] = wid
            self.weights.append(ModelWeight(
                path="/".join(path + [local]),
                variable=Variable(t, tuple(t.shape), dtype_name(t.dtype)),
                trainable=bool(is_param and t.requires_grad), graph_id=wid, named=named,
                layer_class=type(module).__name__, local_name=local))
            out.append((local, wid))
        return out

    def graph(self, module, path, named):
        if isinstance(module, nn.Sequential):
            return self.chain(module, path, named)
        return self.attributes(module, path, named)

    def member(self, module, path, named):
        """The Layer for a module called as one step of a chain."""
        cls = type(module).__name__
        parametric = _owns_weights(module)
        if isinstance(module, nn.Sequential) or any(
                m is not None for m in module._modules.values()):
            return Layer(cls, subgraph=self.graph(module, path, named), parametric=parametric)
        return Layer(cls, self.own(module, path, named), parametric=parametric)

    def chain(self, seq, path, named):
        """An ``nn.Sequential``: each member is one node fed by the previous one, so
        parameterless members are contracted (spec 8.2). Its keys are positions unless the
        user named them (``Sequential(OrderedDict(...))``): digit keys give no name hint."""
        layers, nodes, ref = {}, [], ("input", 0)
        own = self.own(seq, path, named)
        if own:  # tensors registered on the Sequential itself: no call reaches them
            layers["_self"] = Layer("Sequential", own)
        for key, child in seq._modules.items():
            if child is None:
                continue
            seg = sanitize_segment(key)
            layers[seg] = self.member(child, path + [seg], named and not key.isdigit())
            nodes.append(Node(seg, [ref]))
            ref = ("node", len(nodes) - 1, 0)
        return Graph(layers, nodes, [ref] if nodes else [])

    def attributes(self, module, path, named):
        """Any other module: identity by attribute path (like a subclassed Keras model),
        submodules flattened into one graph without nodes until a Sequential is met."""
        layers = {}

        def visit(mod, rel, rel_named):
            own = self.own(mod, path + rel, rel_named)
            if own:
                layers["/".join(rel) or "_self"] = Layer(type(mod).__name__, own)
            children = [(k, c) for k, c in mod._modules.items() if c is not None]
            positional = isinstance(mod, (nn.ModuleList, nn.Sequential))
            if not positional:  # attribute order is construction order, not a role
                children.sort(key=lambda kc: kc[0])
            for key, child in children:
                seg = sanitize_segment(key)
                cnamed = rel_named and not (positional and key.isdigit())
                if isinstance(child, nn.Sequential):
                    layers["/".join(rel + [seg])] = Layer(
                        "Sequential", subgraph=self.chain(child, path + rel + [seg], cnamed),
                        parametric=_owns_weights(child))
                else:
                    visit(child, rel + [seg], cnamed)

        visit(module, [], named)
        return Graph(layers, None)


# ---- optimizer views (a live optimizer, or state torch wrote by position) -------------------
class _OptimizerView:
    """What the describer reads of an optimizer: its class, defaults, groups and state."""

    def __init__(self, cls, defaults, param_groups, state):
        self.cls, self.defaults, self.param_groups, self.state = (
            cls, defaults, param_groups, state)

    @classmethod
    def of(cls, opt):
        if isinstance(opt, _OptimizerView):
            return opt
        return cls(type(opt), dict(opt.defaults), opt.param_groups, opt.state)


# ---- LR scheduler ------------------------------------------------------------------------------
def restore_scheduler(scheduler, source):
    """Load the LR scheduler state recorded in ``source`` (a path or OptimizerState) into
    ``scheduler``, after :func:`import_state`. Only data is loaded (never code): the file must
    name the scheduler's own class, and entries that were not data when written (a function,
    an object) are left as ``scheduler`` has them.

    >>> # restore_scheduler(StepLR(opt, 10), "run.optstate")
    """
    state = source if isinstance(source, OptimizerState) else read(source, verify=True)
    lr = state.optimizer.learning_rate or {}
    if lr.get("kind") != "schedule":
        raise UnsupportedError("the file records no LR scheduler (export with "
                               "optimizer=(optimizer, scheduler)).")
    if lr.get("class_name") != type(scheduler).__name__:
        raise UnsupportedError(f"the file's scheduler is {lr.get('class_name')!r}, the "
                               f"target's is {type(scheduler).__name__!r}; build a "
                               f"{lr.get('class_name')} to continue its schedule.")
    scheduler.load_state_dict(dict(lr.get("config") or {}))
    if getattr(scheduler, "cycle_momentum", False):
        _momentum_at_restored_step(scheduler)
    return scheduler


def _momentum_at_restored_step(scheduler):
    """OneCycleLR and CyclicLR with ``cycle_momentum`` set each group's momentum (Adam's
    ``betas[0]``) as a side effect of computing the learning rate, in ``step()``. Loading
    their state does not, so the next optimizer step would use the momentum the new
    scheduler started from: compute it for the restored step, as ``step()`` did at the
    source. The learning rates it returns are dropped (the import restored them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when get_lr runs outside step()
        try:
            scheduler.get_lr()
        except ValueError:  # a schedule already run to its end: no step is left to take
            pass


# ---- files torch wrote by position -------------------------------------------------------------
def _positional_view(model, optimizer, sd):
    """``sd`` (``optimizer.state_dict()``, keyed by position) re-keyed onto ``optimizer``'s
    parameters: the pairing torch's own ``load_state_dict`` makes, which is right exactly when
    ``optimizer`` was built like the one that wrote ``sd`` (same model, same parameter order).
    Every shape is checked against that pairing first."""
    if not (isinstance(sd, dict) and "state" in sd and "param_groups" in sd):
        raise FormatError("not an optimizer state_dict: expected a dict with 'state' and "
                          "'param_groups'.", code="E_SCHEMA")
    live = optimizer.param_groups
    saved = sd["param_groups"]
    if len(saved) != len(live):
        raise FormatError(f"the file has {len(saved)} parameter groups, the optimizer "
                          f"{len(live)}: pass the optimizer built like the one that wrote it.",
                          code="E_SCHEMA")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    groups, index = [], {}
    for gi, (g, lg) in enumerate(zip(saved, live)):
        if len(g["params"]) != len(lg["params"]):
            raise FormatError(f"parameter group {gi} holds {len(g['params'])} parameters in the "
                              f"file and {len(lg['params'])} in the optimizer: pass the "
                              "optimizer built like the one that wrote it.", code="E_SCHEMA")
        for pid, p in zip(g["params"], lg["params"]):
            index[pid] = p
        groups.append({**{k: v for k, v in g.items() if k != "params"},
                       "params": list(lg["params"])})
    return _view_from(model, optimizer, groups, sd["state"], index, names)


def _view_from(model, optimizer, groups, saved_state, index, names):
    state = {}
    spec = _builtin(type(optimizer))
    problems = []
    for key, entry in saved_state.items():
        if key not in index:
            raise FormatError(f"the file holds state for parameter {key!r}, which no "
                              "parameter group lists.", code="E_SCHEMA")
        p = index[key]
        where = names.get(id(p), f"#{key}")
        for sk in (spec.keys if spec else ()):
            value = entry.get(sk.key)
            if isinstance(value, torch.Tensor):
                want = _torch_shape(sk.layout, p)
                if tuple(value.shape) != want:
                    problems.append(f"{where}: {sk.key} has shape {list(value.shape)}, the "
                                    f"parameter paired with it by position has shape "
                                    f"{list(p.shape)}")
        state[p] = dict(entry)
    if problems:
        raise MatchError("the state does not fit the given model's parameters in the order "
                         "torch pairs them; pass the model and optimizer that wrote it.",
                         code="E_MATCH_SHAPE", problems=problems)
    return _OptimizerView(type(optimizer), dict(optimizer.defaults), groups, state)


def from_state_dict(model, optimizer, sd, path=None, *, scheduler=None, metadata=None,
                    include_weights=False, fsync=True):
    """Convert a positional ``optimizer.state_dict()`` (what ``torch.save`` and Hugging Face
    Trainer's ``optimizer.pt`` hold) into role-keyed state.

    ``model`` and ``optimizer`` must be built the way the ones that wrote ``sd`` were (that
    is the only information that says which position is which parameter); shapes are
    checked. Returns the :class:`OptimizerState`, also written to ``path`` when given.
    ``optimizer`` itself is not changed.

    >>> # sd = torch.load("checkpoint/optimizer.pt", weights_only=True)
    >>> # from_state_dict(model, AdamW(model.parameters()), sd, "run.optstate")
    """
    view = _positional_view(model, optimizer, sd)
    return _write_view(model, view, scheduler, path, metadata, include_weights, fsync)


def convert_optimizer_pt(model, optimizer, src, dst, *, scheduler=None, metadata=None,
                         fsync=True):
    """``torch.load(src, weights_only=True)`` (never unpickling code), then
    :func:`from_state_dict` into ``dst``.

    >>> # convert_optimizer_pt(model, opt, "checkpoint-500/optimizer.pt", "run.optstate")
    """
    sd = torch.load(src, map_location="cpu", weights_only=True)
    return from_state_dict(model, optimizer, sd, dst, scheduler=scheduler, metadata=metadata,
                           fsync=fsync)


def from_dcp_state_dict(model, optimizer, osd, path=None, *, scheduler=None, metadata=None,
                        include_weights=False, fsync=True):
    """Convert an optimizer state keyed by fully qualified parameter names
    (``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``, nested or
    flattened) into role-keyed state. Names are looked up in ``model`` (any of a tied
    parameter's names); ``optimizer`` supplies the class. Returns the OptimizerState.

    >>> # osd = get_optimizer_state_dict(model, opt); from_dcp_state_dict(model, opt, osd, p)
    """
    model = unwrap(model)  # get_optimizer_state_dict names parameters without the wrappers
    fqns = dict(model.named_parameters(remove_duplicate=False))
    names = {id(p): n for n, p in fqns.items()}
    if "state" not in osd and any(str(k).startswith("state.") for k in osd):
        osd = _unflatten_dcp(osd, fqns, optimizer)
    missing = [k for k in osd.get("state", {}) if k not in fqns]
    missing += [k for g in osd.get("param_groups", []) for k in g["params"] if k not in fqns]
    if missing:
        raise MatchError("the state names parameters the model does not have; pass the model "
                         "it was written for.", code="E_MATCH_MAPPING",
                         problems=sorted(set(missing))[:20])
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [fqns[n] for n in g["params"]]} for g in osd["param_groups"]]
    index = {n: fqns[n] for n in osd["state"]}
    view = _view_from(model, optimizer, groups, osd["state"], index, names)
    return _write_view(model, view, scheduler, path, metadata, include_weights, fsync)


def _unflatten_dcp(flat, fqns, optimizer):
    state, hyper = {}, {}
    names = sorted(fqns, key=len, reverse=True)
    for key, value in flat.items():
        section, _, rest = str(key).partition(".")
        fqn = next((n for n in names if rest.startswith(n + ".")), None)
        if section not in ("state", "param_groups") or fqn is None:
            raise FormatError(f"flattened optimizer state key {key!r} names no parameter of "
                              "the model.", code="E_SCHEMA")
        sub = rest[len(fqn) + 1:]
        (state if section == "state" else hyper).setdefault(fqn, {})[sub] = value
    groups = []
    for live in optimizer.param_groups:  # torch's own unflatten takes the groups' split too
        members = [n for n, p in fqns.items() if any(p is q for q in live["params"])
                   and (n in hyper or n in state)]
        if not members:
            continue
        hp = dict(hyper.get(members[0], {}))
        groups.append({**hp, "params": members})
    return {"state": state, "param_groups": groups}


def _write_view(model, view, scheduler, path, metadata, include_weights, fsync):
    state = _api.source_state(model, optimizer=(view, scheduler), metadata=metadata,
                              include_weights=include_weights, materialize=path is None)
    if path is not None:
        write(state, path, fsync=fsync)
        state = read(path, verify=True)
    return state
