"""Keras 3 (and tf.keras when it is Keras 3) adapter.

Describes a Keras 3 model (canonical paths, identity hints, graph) and its
optimizer (canonical slot names from the registry, global variables), and moves
arrays in and out. Public functions mirror the core's API.
"""

from __future__ import annotations

import numpy as np

from optstate_format import _registry

import inspect

from optstate_format._errors import UnsupportedError
from optstate_format._io import read
from optstate_format._state import OptimizerState

from ._keras_base import KerasAdapter, dtype_name, generic_or

import keras  # noqa: E402  (the converter is imported only when a Keras model is seen)
from keras.src.models.functional import Functional

try:  # optional pieces of newer Keras releases
    from keras.src.optimizers.multi_optimizer import MultiOptimizer
except ImportError:  # pragma: no cover
    MultiOptimizer = ()


class Keras3Adapter(KerasAdapter):
    framework = "keras"
    registry_key = "keras3"
    auto_model_names = ("functional", "sequential", "model")

    layer_cls = keras.layers.Layer
    variable_cls = keras.Variable
    input_layer_cls = keras.layers.InputLayer
    sequential_cls = keras.Sequential
    functional_cls = Functional
    model_cls = keras.Model

    def has_sublayers(self, layer):
        return bool(getattr(layer, "_layers", True))

    def history(self, tensor):
        h = tensor._keras_history
        return h.operation, h.node_index, h.tensor_index

    def node_inputs(self, layer, node_index):
        return list(layer._inbound_nodes[node_index].input_tensors)

    def node_n_outputs(self, layer, node_index):
        return len(layer._inbound_nodes[node_index].outputs)

    def own_variables(self, layer):
        seeds = {id(g.state) for g in getattr(layer, "_seed_generators", [])
                 if getattr(g, "state", None) is not None}
        own = list(getattr(layer, "_trainable_variables", [])) + list(
            getattr(layer, "_non_trainable_variables", []))
        return [v for v in own if id(v) not in seeds]

    def _rng_ids(self, model):
        ids = set()
        for layer in model._flatten_layers(include_self=True):
            for g in getattr(layer, "_seed_generators", []):
                if getattr(g, "state", None) is not None:
                    ids.add(id(g.state))
        return ids

    def describe_model(self, model):
        rng = self._rng_ids(model)
        return [(vi, h) for vi, h in super().describe_model(model) if id(vi.var) not in rng]

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

    def assign(self, var, value):
        inner = self._tf_variable(var)
        if inner is not None:
            # The backend's TensorFlow variable, directly: the plan already checked shape
            # and dtype, which is all Keras's wrapper adds (and a sixth of the time).
            inner.assign(value)
        else:
            var.assign(value)

    def snapshot(self, var):
        # A TensorFlow read tensor shares the variable's buffer, which an assignment then
        # leaves alone (it writes to a new one): a snapshot without copying.
        inner = self._tf_variable(var)
        if inner is not None:
            return inner.value()
        return super().snapshot(var)

    def framework_version(self):
        return keras.__version__

    def producer_extra(self):
        return {"backend": keras.backend.backend()}

    def ensure_built(self, opt, model):
        if not opt.built:
            opt.build(model.trainable_variables)

    def optimizer_parts(self, opt, model):
        self.ensure_built(opt, model)
        wrappers, globals_ = [], {}
        while isinstance(opt, keras.optimizers.LossScaleOptimizer):
            cfg = opt.get_config()
            cfg.pop("inner_optimizer", None)
            wrappers.append({"class_name": "LossScaleOptimizer", "config": self.data_only(cfg)})
            globals_["loss_scale.dynamic_scale"] = opt.dynamic_scale
            globals_["loss_scale.step_counter"] = opt.step_counter
            opt = opt.inner_optimizer
        if MultiOptimizer and isinstance(opt, MultiOptimizer):
            return self._multi_parts(opt, wrappers, globals_)
        return self._single_parts(opt, wrappers, globals_)

    def _multi_parts(self, opt, wrappers, globals_):
        """MultiOptimizer: each inner optimizer is a component; its globals are prefixed."""
        attr_of = {}
        for attr, val in sorted(vars(opt).items()):
            if self.is_variable(val):
                attr_of.setdefault(id(val), attr)
        for v in opt._variables:  # the MultiOptimizer's own (its iteration counter)
            globals_[self.global_name(attr_of.get(id(v), v.name))] = v
        cfg = self.data_only(opt.get_config())
        parts = {"algorithm": _registry.MULTI, "class_name": type(opt).__name__,
                 "module": type(opt).__module__, "hyperparameters": cfg, "learning_rate": {},
                 "wrappers": wrappers, "slots": {}, "globals": globals_,
                 "step": int(np.asarray(opt._iterations.numpy())), "components": [],
                 "component_of": {}}
        for i, inner in enumerate(opt.optimizers):
            sub = self._single_parts(inner, [], {})
            parts["components"].append({k: sub[k] for k in (
                "algorithm", "class_name", "module", "hyperparameters", "learning_rate")})
            for vid, slots in sub["slots"].items():
                parts["slots"][vid] = slots
                parts["component_of"][vid] = i
            for name, v in sub["globals"].items():
                globals_[f"component.{i}.{name}"] = v
        return parts

    @staticmethod
    def _builtin_class(opt):
        """The Keras built-in optimizer class ``opt`` is, or None for any other class.

        A backend's own subclass of a built-in (the torch backend's Adam, for one) is that
        built-in: same update rule, same variables. A user's subclass is not.
        """
        cls = type(opt)
        if cls.__module__.startswith("keras.src.backend."):
            cls = next((b for b in cls.__mro__[1:]
                        if b.__module__.startswith("keras.src.optimizers.")), cls)
        return cls if cls.__module__.startswith("keras.src.optimizers.") else None

    def _single_parts(self, opt, wrappers, globals_):
        known = self._builtin_class(opt)
        builtin = known is not None
        cls = (known or type(opt)).__name__
        module = (known or type(opt)).__module__
        alg = generic_or(self.registry_key, cls, builtin)
        attr_map = _registry.attr_to_slot(self.registry_key, alg if builtin else "")
        tvars = list(opt._trainable_variables)
        slots = self.family_parts(opt, tvars, attr_map, opt.variables, globals_)
        cfg = opt.get_config()
        cfg.pop("learning_rate", None)
        sched = opt._learning_rate
        if isinstance(sched, keras.optimizers.schedules.LearningRateSchedule):
            lr = {"kind": "schedule", "class_name": type(sched).__name__,
                  "config": self.data_only(sched.get_config())}
        elif self.is_variable(sched):
            lr = {"kind": "constant", "value": float(np.asarray(sched.numpy()))}
        else:
            lr = {"kind": "callable", "repr": repr(sched)}
        step = int(np.asarray(opt._iterations.numpy()))
        return {"algorithm": alg, "class_name": cls, "module": module,
                "hyperparameters": self.data_only(cfg), "learning_rate": lr,
                "wrappers": wrappers, "slots": slots, "globals": globals_, "step": step}


_ADAPTER = Keras3Adapter()
describe_model = _ADAPTER.describe_model
extract_state = _ADAPTER.extract_state
apply_state = _ADAPTER.apply_state
export_state = _ADAPTER.export_state
import_state = _ADAPTER.import_state


def _allowed(kind, name, builtins, custom_objects, base):
    cls = (custom_objects or {}).get(name) or builtins.get(name)
    if cls is None:
        raise UnsupportedError(
            f"the file names {kind} {name!r}, which is not a built-in Keras 3 {kind}; nothing "
            f"named in a file is imported. Pass custom_objects={{{name!r}: YourClass}}.")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UnsupportedError(f"custom_objects[{name!r}] is not a {base.__name__} subclass.")
    return cls


def _accepted(cls, config):
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        base = inspect.signature(keras.optimizers.Optimizer.__init__).parameters
        params = {**base, **params}
    return {k: v for k, v in config.items() if k in params and k != "self"}


def optimizer_from_state(state, *, custom_objects=None):
    """A new, unbuilt Keras 3 optimizer of the file's class, hyperparameters and schedule.

    Only Keras 3's own optimizer and schedule classes are used, and classes the caller passes
    in ``custom_objects`` (like Keras's own loading): a class named in a file is never imported.
    The state itself is then loaded with :func:`import_state`.

    >>> # opt = optimizer_from_state("run.optstate"); model.compile(opt, loss)
    >>> # import_state(model, "run.optstate")
    """
    if not isinstance(state, OptimizerState):
        state = read(state, verify=True)
    info = state.optimizer
    if info.components:
        raise UnsupportedError("rebuilding a MultiOptimizer needs its variable map, which is "
                               "code; build it yourself, then import_state().")
    builtins = {a.keras3: getattr(keras.optimizers, a.keras3)
                for a in _registry.ALGORITHMS.values()
                if a.keras3 and hasattr(keras.optimizers, a.keras3)}
    cls = _allowed("optimizer", info.class_name, builtins, custom_objects,
                   keras.optimizers.Optimizer)
    config = _accepted(cls, dict(info.hyperparameters))
    lr = info.learning_rate or {}
    if lr.get("kind") == "constant":
        config["learning_rate"] = float(lr["value"])
    elif lr.get("kind") == "schedule":
        schedules = keras.optimizers.schedules
        sched_builtins = {n: getattr(schedules, n) for n in dir(schedules)
                          if isinstance(getattr(schedules, n), type)}
        sched = _allowed("schedule", lr["class_name"], sched_builtins, custom_objects,
                         schedules.LearningRateSchedule)
        config["learning_rate"] = sched.from_config(dict(lr["config"]))
    elif lr:
        raise UnsupportedError(f"the file's learning rate is {lr.get('kind')!r} (code, not "
                               "data); build the optimizer yourself, then import_state().")
    opt = cls(**config)
    for wrapper in reversed(info.wrappers):
        if wrapper.get("class_name") != "LossScaleOptimizer":
            raise UnsupportedError(f"wrapper {wrapper.get('class_name')!r} is not supported.")
        wcfg = _accepted(keras.optimizers.LossScaleOptimizer, dict(wrapper.get("config", {})))
        wcfg.pop("inner_optimizer", None)
        opt = keras.optimizers.LossScaleOptimizer(opt, **wcfg)
    return opt
