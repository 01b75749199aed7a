"""tf_keras (Keras 2) adapter: models, the new optimizers and the legacy optimizers.

Describes a tf_keras model (same canonical paths and structural identities as the
Keras 3 adapter, so state moves between generations) and both optimizer families,
whose slots are named through the registry's tf_keras and tf_keras_legacy columns.
Legacy optimizers create slots lazily: import creates them with
``_create_all_weights`` (no step taken, no weight changed).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras
from tf_keras.src.engine.functional import Functional
from tf_keras.src.mixed_precision import loss_scale_optimizer as _lso
from tf_keras.src.optimizers.legacy.optimizer_v2 import OptimizerV2
from tf_keras.src.optimizers.legacy.optimizer_v2 import _var_key as _legacy_var_key

from optstate_format import _registry
from optstate_format._errors import UnsupportedError

from ._keras_base import KerasAdapter, PyAttrHandle, dtype_name, generic_or

_LSO_TYPES = (_lso.LossScaleOptimizer, _lso.LossScaleOptimizerV3)


class TfKerasAdapter(KerasAdapter):
    framework = "tf_keras"
    auto_model_names = ("model", "sequential", "functional")

    layer_cls = tf_keras.layers.Layer
    variable_cls = tf.Variable
    input_layer_cls = tf_keras.layers.InputLayer
    sequential_cls = tf_keras.Sequential
    functional_cls = Functional
    model_cls = tf_keras.Model

    def has_sublayers(self, layer):
        try:
            return any(True for _ in layer._flatten_layers(include_self=False, recursive=False))
        except AttributeError:
            return True

    def history(self, tensor):
        h = tensor._keras_history
        return h.layer, h.node_index, h.tensor_index

    def node_inputs(self, layer, node_index):
        return list(layer._inbound_nodes[node_index].keras_inputs)

    def node_n_outputs(self, layer, node_index):
        return len(tf.nest.flatten(layer._inbound_nodes[node_index].outputs))

    def own_variables(self, layer):
        return list(getattr(layer, "_trainable_weights", [])) + list(
            getattr(layer, "_non_trainable_weights", []))

    def var_name(self, var):
        return var.name.split(":")[0].split("/")[-1]

    def _fallback_path(self, var):
        return var.name.split(":")[0]

    def var_dtype(self, var):
        if isinstance(var, PyAttrHandle):
            return var.dtype
        return dtype_name(var.dtype)

    def var_numpy(self, var):
        return np.asarray(var.numpy())

    def assign(self, var, value):
        var.assign(value)

    def snapshot(self, var):
        # A TensorFlow read tensor shares the variable's buffer, which an assignment then
        # leaves alone (it writes to a new one): a snapshot without copying.
        if isinstance(var, tf.Variable):
            return var.value()
        return super().snapshot(var)

    def framework_version(self):
        return tf_keras.__version__

    def producer_extra(self):
        return {"backend": f"tensorflow {tf.__version__}"}

    # ---- optimizers ------------------------------------------------------------------
    @staticmethod
    def _unwrap(opt):
        while isinstance(opt, _LSO_TYPES):
            opt = opt.inner_optimizer
        return opt

    def ensure_built(self, opt, model):
        inner = self._unwrap(opt)
        tvars = list(model.trainable_variables)
        if isinstance(inner, OptimizerV2):
            with tf.init_scope():
                inner._create_all_weights(tvars)
        elif not getattr(inner, "_built", False):
            inner.build(tvars)

    def optimizer_parts(self, opt, model):
        self.ensure_built(opt, model)
        wrappers, globals_ = [], {}
        while isinstance(opt, _LSO_TYPES):
            cfg = opt.get_config()
            cfg.pop("inner_optimizer", None)
            wrappers.append({"class_name": "LossScaleOptimizer", "config": self.data_only(cfg)})
            state = opt._loss_scale
            if not isinstance(state, float):
                globals_["loss_scale.dynamic_scale"] = state._current_loss_scale
                globals_["loss_scale.step_counter"] = state._counter
            opt = opt.inner_optimizer
        if isinstance(opt, OptimizerV2):
            return self._legacy_parts(opt, model, wrappers, globals_)
        return self._new_parts(opt, model, wrappers, globals_)

    def _learning_rate(self, lr):
        if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
            return {"kind": "schedule", "class_name": type(lr).__name__,
                    "config": self.data_only(lr.get_config())}
        if isinstance(lr, tf.Variable):
            return {"kind": "constant", "value": float(np.asarray(lr.numpy()))}
        if isinstance(lr, (int, float, np.floating)):
            return {"kind": "constant", "value": float(lr)}
        return {"kind": "callable", "repr": repr(lr)}

    def _common(self, opt, key, builtin_prefix, wrappers, globals_, slots, lr_obj):
        cls = type(opt).__name__
        builtin = type(opt).__module__.startswith(builtin_prefix)
        alg = generic_or(key, cls, builtin)
        cfg = opt.get_config()
        cfg.pop("learning_rate", None)
        return {"algorithm": alg, "class_name": cls, "module": type(opt).__module__,
                "hyperparameters": self.data_only(cfg), "learning_rate": self._learning_rate(
                    lr_obj), "wrappers": wrappers, "slots": slots, "globals": globals_,
                "step": int(np.asarray(opt.iterations.numpy()))}

    def _legacy_parts(self, opt, model, wrappers, globals_):
        cls = type(opt).__name__
        builtin = type(opt).__module__.startswith("tf_keras.src.optimizers.legacy")
        alg = generic_or("tf_keras_legacy", cls, builtin)
        attr_map = _registry.attr_to_slot("tf_keras_legacy", alg if builtin else "")
        slots, slot_ids = {}, set()
        for v in model.trainable_variables:
            per_var = opt._slots.get(_legacy_var_key(v), {})
            for sname, sv in sorted(per_var.items()):
                slots.setdefault(id(v), {})[attr_map.get(sname) or self.global_name(sname)] = sv
                slot_ids.add(id(sv))
        globals_["iterations"] = opt.iterations
        lr = opt._hyper.get("learning_rate")
        if isinstance(lr, tf.Variable):
            globals_["learning_rate"] = lr
        hyper_ids = {id(h) for h in opt._hyper.values() if isinstance(h, tf.Variable)}
        alg_globals = {g[3]: g[0] for g in (_registry.ALGORITHMS[alg].globals
                                            if alg in _registry.ALGORITHMS else ())}
        attr_of = {id(val): attr for attr, val in vars(opt).items() if self.is_variable(val)}
        taken = {id(v) for v in globals_.values()}
        for w in opt.weights:
            if id(w) in slot_ids or id(w) in taken or id(w) in hyper_ids:
                continue
            attr = attr_of.get(id(w), self.var_name(w))
            globals_[alg_globals.get(attr) or self.global_name(attr)] = w
        return self._common(opt, "tf_keras_legacy", "tf_keras.src.optimizers.legacy", wrappers,
                            globals_, slots, opt._hyper.get("learning_rate"))

    def _new_parts(self, opt, model, wrappers, globals_):
        cls = type(opt).__name__
        builtin = type(opt).__module__.startswith("tf_keras.src.optimizers")
        alg = generic_or("tf_keras", cls, builtin)
        attr_map = _registry.attr_to_slot("tf_keras", alg if builtin else "")
        index = getattr(opt, "_index_dict", {})
        by_index = {}
        for v in model.trainable_variables:
            i = index.get(opt._var_key(v))
            if i is not None:
                by_index[i] = v
        if len(by_index) != len(index) or sorted(by_index) != list(range(len(by_index))):
            raise UnsupportedError("the optimizer was built for variables that are not all in "
                                   "this model; pass the model it was built for.")
        tvars = [by_index[i] for i in range(len(by_index))]
        variables = opt.variables
        variables = variables() if callable(variables) else variables
        slots = self.family_parts(opt, tvars, attr_map, variables, globals_)
        if isinstance(getattr(opt, "_u_product_counter", None), int):
            globals_["tf_keras.u_product_counter"] = PyAttrHandle(opt, "_u_product_counter")
        if isinstance(opt._learning_rate, tf.Variable) and "learning_rate" not in globals_:
            globals_["learning_rate"] = opt._learning_rate
        return self._common(opt, "tf_keras", "tf_keras.src.optimizers", wrappers, globals_,
                            slots, opt._learning_rate)


_ADAPTER = TfKerasAdapter()
describe_model = _ADAPTER.describe_model
extract_state = _ADAPTER.extract_state
apply_state = _ADAPTER.apply_state
export_state = _ADAPTER.export_state
import_state = _ADAPTER.import_state
