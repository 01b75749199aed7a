"""Keras 3 adapter (tf.keras too, when it is Keras 3), on every backend.

Describes a Keras 3 model (canonical paths, identity inputs, graph) and its
optimizer (canonical slot names from ``_keras_tables.KERAS3``, global variables)
as ``optstate_format.adapter`` records, and moves arrays in and out. Every
private Keras name it touches is in ``PRIVATE`` below.
"""

from __future__ import annotations

import inspect
import math
import re

import numpy as np

import keras  # the converter is imported only when a Keras model is seen

from optstate_format import _registry
from optstate_format._errors import FormatError, UnsupportedError
from optstate_format._io import read
from optstate_format._state import OptimizerInfo, OptimizerState
from optstate_format.adapter import OptimizerDescription, Regions, box_of

from ._keras_graph import KerasAdapter, dtype_name, generic_or, tf_adopt
from ._keras_tables import KERAS3
from ._private import PrivateAPI

# The Keras 3 releases this converter is tested against (pyproject's keras extra).
SUPPORTED = ">=3.12,<3.16"

PRIVATE = PrivateAPI("keras", keras.__version__, SUPPORTED, attrs={
    "_keras_history": "the (operation, node index, tensor index) that made a symbolic tensor",
    "_inbound_nodes": "a layer's call nodes",
    "_layers": "a layer's tracked sublayers",
    "_trainable_variables": "the variables a layer or optimizer owns itself (trainable)",
    "_non_trainable_variables": "the variables a layer owns itself (non-trainable)",
    "_seed_generators": "a layer's random seed generators (their state is not a weight)",
    "_flatten_layers": "every layer of a model, nested ones included",
    "_variables": "every variable an optimizer owns",
    "_iterations": "an optimizer's step counter",
    "_learning_rate": "an optimizer's learning rate (variable or schedule)",
    "_initial_epoch": "the epoch fit() starts at when set (BackupAndRestore's hook)",
}, modules={
    "keras.src.models.functional:Functional": "the functional model class",
    "keras.src.optimizers.multi_optimizer:MultiOptimizer": "the multi-optimizer class",
})
_GENERATED_WEIGHT = re.compile(r"^variable(_\d+)?$")
_BUILTIN_MODULE = "keras.src.optimizers."


def _multi_optimizer_class():
    """MultiOptimizer where this Keras has one (newer releases), else None."""
    try:
        return PRIVATE.load("keras.src.optimizers.multi_optimizer:MultiOptimizer")
    except UnsupportedError:
        return None



class Keras3Adapter(KerasAdapter):
    framework = "keras"
    auto_model_names = ("functional", "sequential", "model")
    private = PRIVATE

    layer_cls = keras.layers.Layer
    variable_cls = keras.Variable
    input_layer_cls = keras.layers.InputLayer
    sequential_cls = keras.Sequential
    functional_cls = PRIVATE.load("keras.src.models.functional:Functional")
    model_cls = keras.Model
    multi_cls = _multi_optimizer_class()

    def has_sublayers(self, layer):
        return bool(PRIVATE.get(layer, "_layers", True))

    def history(self, tensor):
        h = PRIVATE.get(tensor, "_keras_history")
        return h.operation, h.node_index, h.tensor_index

    def node_inputs(self, layer, node_index):
        return list(PRIVATE.get(layer, "_inbound_nodes")[node_index].input_tensors)

    def node_n_outputs(self, layer, node_index):
        return len(PRIVATE.get(layer, "_inbound_nodes")[node_index].outputs)

    def own_variables(self, layer):
        seeds = {id(g.state) for g in PRIVATE.get(layer, "_seed_generators", [])
                 if getattr(g, "state", None) is not None}
        own = list(PRIVATE.get(layer, "_trainable_variables", [])) + list(
            PRIVATE.get(layer, "_non_trainable_variables", []))
        return [v for v in own if id(v) not in seeds]

    def is_generated_weight_name(self, name):
        # add_weight() without a name: Keras numbers "variable" by a process-wide counter
        return bool(_GENERATED_WEIGHT.match(name))

    def _rng_ids(self, model):
        ids = set()
        for layer in PRIVATE.get(model, "_flatten_layers")(include_self=True):
            for g in PRIVATE.get(layer, "_seed_generators", []):
                if getattr(g, "state", None) is not None:
                    ids.add(id(g.state))
        return ids

    def describe_model(self, model):
        desc = super().describe_model(model)
        rng = self._rng_ids(model)
        desc.weights = [w for w in desc.weights if id(w.variable.handle) not in rng]
        return desc

    def var_name(self, var):
        return var.name

    def var_dtype(self, var):
        return dtype_name(var.dtype)

    def var_numpy(self, var):
        return np.asarray(var.numpy())

    @staticmethod
    def _tf_variable(var):
        """The TensorFlow variable behind a Keras variable (TensorFlow backend), or None."""
        inner = getattr(var, "value", None)
        if inner is not None and hasattr(inner, "read_value") and hasattr(inner, "assign"):
            return inner
        return None

    def local_boxes(self, var):
        """The regions of ``var`` this process's devices hold, when it is spread over several
        processes (Keras 3 on JAX under ``jax.distributed``); None when this process holds
        all of it (adapter protocol, spec 14.11)."""
        value = getattr(var, "value", None)
        if getattr(value, "is_fully_addressable", True) is not False:
            return None
        shape = tuple(int(d) for d in value.shape)
        boxes = {box_of(index, shape)
                 for index in value.sharding.addressable_devices_indices_map(shape).values()}
        whole = ((0,) * len(shape), shape)
        return None if whole in boxes else sorted(boxes)

    def assign(self, var, value):
        current = getattr(var, "value", None)
        if getattr(current, "is_fully_addressable", True) is False:
            # spread over the processes of a job (JAX): each process puts its own devices'
            # parts in place, from its regions (a Regions, for a variable local_boxes split)
            # or the whole array. Nothing here is a collective, so a process whose
            # assignment fails midway cannot leave another waiting in one (spec 14.11);
            # Keras's own assign of a host array would reshard through device_put.
            import jax
            if isinstance(value, jax.Array):  # a snapshot put back: the variable's own array
                var.assign(value)
                return
            dtype = current.dtype
            whole = None if isinstance(value, Regions) else np.asarray(value)

            def part(index):
                got = value.box(index) if whole is None else whole[index]
                return np.asarray(got, dtype=dtype)
            shape = tuple(int(d) for d in current.shape)
            var.assign(jax.make_array_from_callback(shape, current.sharding, part))
            return
        inner = self._tf_variable(var)
        if inner is not None:
            # The backend's TensorFlow variable, directly: the plan already checked shape
            # and dtype, which is all Keras's wrapper adds (and a sixth of the time).
            inner.assign(value)
        else:
            var.assign(value)

    def adopt(self, var, value):
        inner = self._tf_variable(var)
        if inner is None or not tf_adopt(inner, value):
            self.assign(var, value)

    def snapshot(self, var):
        # A TensorFlow read tensor shares the variable's buffer, which an assignment then
        # leaves alone (it writes to a new one): a snapshot without copying.
        inner = self._tf_variable(var)
        if inner is not None:
            return inner.value()
        value = getattr(var, "value", None)
        if getattr(value, "is_fully_addressable", True) is False:
            # a JAX array spread over several processes (it cannot be fetched here): JAX
            # arrays are immutable, so the array itself is the snapshot
            return value
        return super().snapshot(var)

    def restore(self, var, snapshot):
        self.assign(var, snapshot)

    def framework_version(self):
        return keras.__version__

    def producer_extra(self):
        return {"backend": keras.backend.backend()}

    def optimizer_parts(self, opt, model) -> OptimizerDescription:
        if not opt.built:
            opt.build(model.trainable_variables)
        wrappers, globals_ = [], {}
        while isinstance(opt, keras.optimizers.LossScaleOptimizer):
            cfg = opt.get_config()
            cfg.pop("inner_optimizer", None)
            wrappers.append({"class_name": "LossScaleOptimizer", "config": self.data_only(cfg)})
            globals_["loss_scale.dynamic_scale"] = opt.dynamic_scale
            globals_["loss_scale.step_counter"] = opt.step_counter
            opt = opt.inner_optimizer
        if self.multi_cls is not None and isinstance(opt, self.multi_cls):
            return self._multi_parts(opt, wrappers, globals_)
        info, slots, step = self._single_parts(opt, wrappers, globals_)
        return OptimizerDescription(info, step, self.slot_sets(slots), self.globals_of(globals_))

    def _multi_parts(self, opt, wrappers, globals_):
        """MultiOptimizer: each inner optimizer is a component; its globals are prefixed."""
        attr_of = {}
        for attr, val in sorted(vars(opt).items()):
            if self.is_variable(val):
                attr_of.setdefault(id(val), attr)
        for v in PRIVATE.get(opt, "_variables"):  # the MultiOptimizer's own (its counter)
            globals_[self.global_name(attr_of.get(id(v), v.name))] = v
        components, slots, component_of = [], {}, {}
        for i, inner in enumerate(opt.optimizers):
            sub_globals = {}
            sub, sub_slots, _ = self._single_parts(inner, [], sub_globals)
            components.append({"algorithm": sub.algorithm, "class_name": sub.class_name,
                               "module": sub.module, "hyperparameters": sub.hyperparameters,
                               "learning_rate": sub.learning_rate})
            for vid, pair in sub_slots.items():
                slots[vid] = pair
                component_of[vid] = i
            for name, v in sub_globals.items():
                globals_[f"component.{i}.{name}"] = v
        info = OptimizerInfo(_registry.MULTI, type(opt).__name__, type(opt).__module__,
                             self.data_only(opt.get_config()), {}, wrappers, components)
        step = int(np.asarray(PRIVATE.get(opt, "_iterations").numpy()))
        return OptimizerDescription(info, step, self.slot_sets(slots, component_of),
                                    self.globals_of(globals_))

    @staticmethod
    def _builtin_class(opt):
        """The Keras built-in optimizer class ``opt`` is, or None for any other class.

        A backend's own subclass of a built-in (the torch backend's Adam, for one) is that
        built-in: same update rule, same variables. A user's subclass is not.
        """
        cls = type(opt)
        if cls.__module__.startswith("keras.src.backend."):
            cls = next((b for b in cls.__mro__[1:]
                        if b.__module__.startswith(_BUILTIN_MODULE)), cls)
        return cls if cls.__module__.startswith(_BUILTIN_MODULE) else None

    def _single_parts(self, opt, wrappers, globals_):
        """(OptimizerInfo, slots by model variable, step) of one (inner) optimizer."""
        known = self._builtin_class(opt)
        builtin = known is not None
        cls = (known or type(opt)).__name__
        module = (known or type(opt)).__module__
        alg = generic_or(KERAS3, cls, builtin)
        names = KERAS3.slot_names(alg) if builtin and alg in _registry.ALGORITHMS else None
        tvars = list(PRIVATE.get(opt, "_trainable_variables"))
        slots = self.family_parts(opt, tvars, names, alg, opt.variables, globals_)
        cfg = opt.get_config()
        cfg.pop("learning_rate", None)
        sched = PRIVATE.get(opt, "_learning_rate")
        if isinstance(sched, keras.optimizers.schedules.LearningRateSchedule):
            lr = {"kind": "schedule", "class_name": type(sched).__name__,
                  "config": self.data_only(sched.get_config())}
        elif self.is_variable(sched):
            lr = {"kind": "constant", "value": float(np.asarray(sched.numpy()))}
        else:
            lr = {"kind": "callable", "repr": repr(sched)}
        step = int(np.asarray(PRIVATE.get(opt, "_iterations").numpy()))
        info = OptimizerInfo(alg, cls, module, self.data_only(cfg), lr, wrappers)
        return info, slots, step


ADAPTER = Keras3Adapter()
describe_model = ADAPTER.describe_model


def export_state(model, path, **kw):
    """``optstate_format.export_state`` for a Keras 3 model."""
    from optstate_format import _api
    return _api.export_state(model, path, **kw)


def import_state(model, path, **kw):
    """``optstate_format.import_state`` for a Keras 3 model."""
    from optstate_format import _api
    return _api.import_state(model, path, **kw)


def _allowed(kind, name, builtins, custom_objects, base):
    if not isinstance(name, str):
        raise FormatError(f"the file's {kind} class name is {type(name).__name__}, not a "
                          "string.", code="E_SCHEMA")
    cls = (custom_objects or {}).get(name) or builtins.get(name)
    if cls is None:
        raise UnsupportedError(
            f"the file names {kind} {name!r}, which is not a built-in Keras 3 {kind}; nothing "
            f"named in a file is imported. Pass custom_objects={{{name!r}: YourClass}}.")
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        raise UnsupportedError(f"{name!r} is not a concrete {base.__name__} subclass.")
    return cls


def _accepted(cls, config, base):
    """The entries of ``config`` that ``cls.__init__`` accepts (the rest are dropped)."""
    if not isinstance(config, dict):
        raise FormatError(f"the file's config for {cls.__name__} is "
                          f"{type(config).__name__}, not a map.", code="E_SCHEMA")
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        params = {**inspect.signature(base.__init__).parameters, **params}
    out = {k: v for k, v in config.items() if k in params and k != "self"}
    for k, v in out.items():
        default = params[k].default
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise FormatError(f"the file's {cls.__name__} {k}={v!r} is not a number.",
                              code="E_SCHEMA")
    return out


def _build(what, cls, call):
    """Run a Keras constructor on file data; its complaints become ours."""
    try:
        return call()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise UnsupportedError(f"the file's {what} cannot be rebuilt as {cls.__name__}: "
                               f"{type(e).__name__}: {str(e)[:200]}. Build the optimizer "
                               "yourself, then import_state().") from None


def _learning_rate(lr, custom_objects):
    """The learning rate a file describes (spec 4.1): a float, a schedule, or nothing."""
    if not isinstance(lr, dict):
        raise FormatError("the file's learning_rate is not a map.", code="E_SCHEMA")
    kind = lr.get("kind")
    if kind == "constant":
        value = lr.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value) or value < 0:
            raise FormatError(f"the file's constant learning rate is {value!r}; expected a "
                              "finite number >= 0.", code="E_SCHEMA")
        return float(value)
    if kind == "schedule":
        schedules = keras.optimizers.schedules
        builtins = {n: getattr(schedules, n) for n in dir(schedules)
                    if isinstance(getattr(schedules, n), type)}
        sched = _allowed("schedule", lr.get("class_name"), builtins, custom_objects,
                         schedules.LearningRateSchedule)
        config = lr.get("config")
        if not isinstance(config, dict):
            raise FormatError("the file's schedule config is not a map.", code="E_SCHEMA")
        return _build("learning-rate schedule", sched, lambda: sched.from_config(
            _accepted(sched, config, schedules.LearningRateSchedule)))
    raise UnsupportedError(f"the file's learning rate is {kind!r} (code, not data); build "
                           "the optimizer yourself, then import_state().")


def optimizer_from_state(state, *, custom_objects=None):
    """A new, unbuilt Keras 3 optimizer of the file's class, hyperparameters and schedule.

    Only Keras 3's own optimizer and schedule classes are used, and classes the caller passes
    in ``custom_objects`` (like Keras's own loading): a class named in a file is never imported.
    Anything the file says that Keras would not accept ends in ``UnsupportedError`` or
    ``FormatError``. The state itself is then loaded with :func:`import_state`.

    >>> # opt = optimizer_from_state("run.optstate"); model.compile(opt, loss)
    >>> # import_state(model, "run.optstate")
    """
    if not isinstance(state, OptimizerState):
        state = read(state, verify=True)
    info = state.optimizer
    if info.components:
        raise UnsupportedError("rebuilding a MultiOptimizer needs its variable map, which is "
                               "code; build it yourself, then import_state().")
    builtins = {name: getattr(keras.optimizers, name) for name in KERAS3.classes.values()
                if hasattr(keras.optimizers, name)}
    cls = _allowed("optimizer", info.class_name, builtins, custom_objects,
                   keras.optimizers.Optimizer)
    base = keras.optimizers.Optimizer
    config = _accepted(cls, info.hyperparameters, base)
    if info.learning_rate:
        config["learning_rate"] = _learning_rate(info.learning_rate, custom_objects)
    opt = _build("optimizer", cls, lambda: cls(**config))
    if not isinstance(info.wrappers, list):
        raise FormatError("the file's wrappers are not a list.", code="E_SCHEMA")
    for wrapper in reversed(info.wrappers):
        if not isinstance(wrapper, dict) or wrapper.get("class_name") != "LossScaleOptimizer":
            name = wrapper.get("class_name") if isinstance(wrapper, dict) else wrapper
            raise UnsupportedError(f"wrapper {name!r} is not supported.")
        lso = keras.optimizers.LossScaleOptimizer
        wcfg = _accepted(lso, wrapper.get("config") or {}, base)
        wcfg.pop("inner_optimizer", None)
        opt = _build("loss-scale wrapper", lso, lambda: lso(opt, **wcfg))
    return opt
from ._keras_callback import Keras3OptStateCheckpoint as OptStateCheckpoint  # noqa: E402,F401
