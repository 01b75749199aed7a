"""Rescue checkpoints people already have: convert them into optstate training-state archives.

``convert(src, dst, *, model=None, custom_objects=None)`` reads

- a Keras 3 ``.keras`` file: the model is rebuilt from the file's own config (Keras's safe mode;
  custom classes only from ``custom_objects``), its weights and optimizer loaded natively (by
  position, which is right for the very model that wrote them), and written with its weights;
- a Keras ``.h5`` model file (config + ``optimizer_weights``) written by tf_keras (either
  optimizer family) or by Keras 3: the same;
- a ``.weights.h5`` file or a ``tf.train.Checkpoint`` (a prefix, or the folder holding its
  ``checkpoint`` file): these hold no config, so ``model`` must be the model that wrote them,
  compiled with its optimizer; the checkpoint is loaded into it.

Before writing, every optimizer variable is compared with the source's own arrays (h5) or the
checkpoint reader confirms every variable was matched (tf.train): when Keras's loader skips the
optimizer (it only warns), the conversion is refused instead of writing a fresh optimizer as if
it were the trained one. Nothing named in a source file is imported or called: classes outside
Keras must come from ``custom_objects``, and ``Lambda`` layers (code) are refused.

Errors (``optstate_format._errors``): ``E_CONVERT_SOURCE`` (FormatError: not a file convert
reads), ``E_CONVERT_MODEL`` (UnsupportedError: a model is needed, or ``model`` is not the one
that wrote the file), ``E_CONVERT_OPTIMIZER`` (UnsupportedError: the source holds no optimizer
state, or it could not be loaded exactly), ``E_UNSUPPORTED`` (a class or code the file names
that is not Keras's and was not given), plus the export's own errors.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
import zipfile

import numpy as np

import optstate_format as osf
from optstate_format import _progress
from optstate_format._errors import FormatError, OptStateError, UnsupportedError

KINDS = ("keras", "h5", "weights.h5", "tf-checkpoint")


def _source_error(msg, src):
    return FormatError(msg, code="E_CONVERT_SOURCE", path=os.fspath(src))


def _optimizer_error(msg, src):
    return UnsupportedError(msg, code="E_CONVERT_OPTIMIZER", path=os.fspath(src))


def _model_error(msg, src):
    return UnsupportedError(msg, code="E_CONVERT_MODEL", path=os.fspath(src))


def _tf_checkpoint_prefix(src):
    src = os.fspath(src)
    if os.path.isdir(src):
        if not os.path.isfile(os.path.join(src, "checkpoint")):
            return None
        import tensorflow as tf
        return tf.train.latest_checkpoint(src)
    if os.path.isfile(src + ".index"):
        return src
    if src.endswith(".index") and os.path.isfile(src):
        return src[:-len(".index")]
    return None


def source_kind(src) -> str:
    """What ``src`` is: one of :data:`KINDS`, judged by content (a FormatError otherwise)."""
    path = os.fspath(src)
    if _tf_checkpoint_prefix(path):
        return "tf-checkpoint"
    if not os.path.isfile(path):
        raise _source_error(f"{path} does not exist (expected a .keras, .h5 or .weights.h5 "
                            "file, or a tf.train.Checkpoint prefix or folder).", path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except zipfile.BadZipFile as e:
            raise _source_error(f"{path} is a damaged zip file ({e}).", path) from None
        if {"config.json", "model.weights.h5"} <= names:
            return "keras"
        raise _source_error(f"{path} is a zip file but not a Keras 3 .keras file (it lacks "
                            "config.json or model.weights.h5).", path)
    if magic == b"\x89HDF\r\n\x1a\n":
        import h5py
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "h5"
        return "weights.h5"
    raise _source_error(f"{path} is neither a Keras file (.keras zip or HDF5) nor a "
                        "tf.train.Checkpoint; nothing to convert.", path)


# ---- safe mode: what the config names -------------------------------------------------------
def _named_objects(obj, out):
    """Every (class_name, module, registered_name, where) a Keras config names."""
    if isinstance(obj, dict):
        if isinstance(obj.get("class_name"), str):
            out.append((obj["class_name"], obj.get("module"), obj.get("registered_name"),
                        obj.get("config", {}).get("name") if isinstance(
                            obj.get("config"), dict) else None))
        for v in obj.values():
            _named_objects(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _named_objects(v, out)
    return out


def _check_safe(config, custom_objects, src, frameworks):
    """Refuse, by name, anything the config would have Keras import or run.

    Keras built-ins (``module`` under ``frameworks``) are fine; any other class must be in
    ``custom_objects``; ``Lambda`` layers and lambdas hold code and are refused.
    """
    custom = set(custom_objects or {})
    refused = []
    for cls, module, registered, name in _named_objects(config, []):
        label = f"{cls!r}" + (f" (layer {name!r})" if name else "")
        if cls in ("Lambda", "__lambda__") and cls not in custom:
            refused.append(f"{label}: holds Python code, which is never run from a file; "
                           "rebuild the model yourself and pass model=")
            continue
        if module is None or module == "builtins":
            if registered and ">" in str(registered) and registered not in custom \
                    and cls not in custom:
                refused.append(f"{label} registered as {registered!r}: pass it in "
                               "custom_objects")
            continue
        if module.split(".")[0] in frameworks:
            continue
        if cls not in custom and (registered or "") not in custom:
            refused.append(f"{label} from module {module!r}: not a Keras class; pass it in "
                           f"custom_objects={{{cls!r}: YourClass}}")
    if refused:
        raise UnsupportedError("the file names classes or code outside Keras; nothing named in "
                               "a file is imported or run:\n  " + "\n  ".join(refused),
                               path=os.fspath(src))


# ---- exactness: the loaded optimizer is the file's ------------------------------------------
def _h5_optimizer_arrays(group, src):
    """The optimizer's arrays in a Keras 3 weights file, by position (``optimizer/vars/N``)."""
    if group is None or "optimizer" not in group or "vars" not in group["optimizer"]:
        return None
    vars_ = group["optimizer"]["vars"]
    names = set(vars_.keys())
    if names != {str(i) for i in range(len(names))}:
        raise _optimizer_error(f"the optimizer arrays in {os.fspath(src)} are not numbered "
                               f"0..{len(names) - 1} ({sorted(names)[:8]}...): the file is "
                               "damaged; nothing exact to convert.", src)
    return [vars_[str(i)] for i in range(len(names))]


def _opt_variables(opt):
    v = opt.variables
    return list(v() if callable(v) else v)


def _same_arrays(loaded, stored, what, src):
    if stored is None or len(stored) == 0:
        raise _optimizer_error(f"{os.fspath(src)} holds no optimizer state (saved without "
                               "the optimizer, or never trained): nothing exact to convert. "
                               "Export a model that holds its optimizer instead.", src)
    if len(loaded) != len(stored):
        raise _optimizer_error(f"the file holds {len(stored)} {what} arrays but the rebuilt "
                               f"optimizer has {len(loaded)} variables: Keras did not load "
                               "them (it only warns); refusing to write a fresh optimizer "
                               "as the trained one.", src)
    for i, (var, arr) in enumerate(zip(loaded, stored)):
        a = np.asarray(var.numpy())
        b = np.asarray(arr[()])
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            raise _optimizer_error(f"optimizer variable {i} ({getattr(var, 'path', None) or var.name}) "
                                   "differs from the file's array after loading: Keras did not "
                                   "load the optimizer exactly; refusing.", src)


# ---- loaders --------------------------------------------------------------------------------
def _load_keras(src, custom_objects):
    import h5py
    import keras
    with zipfile.ZipFile(src) as z:
        try:
            config = json.loads(z.read("config.json"))
        except ValueError as e:
            raise _source_error(f"config.json is not JSON ({e}).", src) from None
        _check_safe(config, custom_objects, src, ("keras",))
        if not config.get("compile_config"):
            raise _optimizer_error(f"{os.fspath(src)} was saved without a compiled optimizer: "
                                   "it holds no optimizer state to convert.", src)
        try:
            model = keras.saving.load_model(src, custom_objects=custom_objects, compile=True,
                                            safe_mode=True)
        except OptStateError:
            raise
        except Exception as e:
            raise UnsupportedError(f"Keras could not rebuild the model from {os.fspath(src)} "
                                   f"({type(e).__name__}: {e}).", path=os.fspath(src)) from e
        if getattr(model, "optimizer", None) is None:
            raise _optimizer_error(f"{os.fspath(src)} holds no optimizer.", src)
        with z.open("model.weights.h5") as raw, h5py.File(raw, "r") as f:
            _same_arrays(_opt_variables(model.optimizer), _h5_optimizer_arrays(f, src),
                         "optimizer", src)
    return model


def _load_h5(src, custom_objects):
    import h5py
    with h5py.File(src, "r") as f:
        raw = f.attrs["model_config"]
        version = f.attrs.get("keras_version", "")
        version = version.decode() if isinstance(version, bytes) else str(version)
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except ValueError as e:
            raise _source_error(f"model_config is not JSON ({e}).", src) from None
        if "optimizer_weights" not in f or "training_config" not in f.attrs:
            raise _optimizer_error(f"{os.fspath(src)} holds no optimizer state (saved with "
                                   "include_optimizer=False, or before compiling).", src)
        _check_safe(config, custom_objects, src, ("keras", "tf_keras"))
        _check_safe(json.loads(f.attrs["training_config"]), custom_objects, src,
                    ("keras", "tf_keras"))
        group = f["optimizer_weights"]
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in group.attrs.get("weight_names", [])]
        stored = [np.asarray(group[n]) for n in names]
    if version.startswith("3."):
        model = _load_keras3_h5(src, custom_objects, stored)
    else:
        import tf_keras
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = tf_keras.models.load_model(os.fspath(src), custom_objects=custom_objects,
                                                   compile=True)
            except OptStateError:
                raise
            except Exception as e:
                raise UnsupportedError(f"tf_keras could not rebuild the model from "
                                       f"{os.fspath(src)} ({type(e).__name__}: {e}).",
                                       path=os.fspath(src)) from e
    if getattr(model, "optimizer", None) is None:
        raise _optimizer_error(f"{os.fspath(src)} holds no optimizer.", src)
    opt = model.optimizer
    loaded = opt.weights if hasattr(opt, "_create_all_weights") else _opt_variables(opt)
    _same_arrays(list(loaded), [np.asarray(a) for a in stored], "optimizer_weights", src)
    return model


def _load_keras3_h5(src, custom_objects, stored):
    """A Keras 3 legacy .h5: Keras 3 cannot compile one back (its metrics fail to
    deserialize), so the model is rebuilt without compiling, the optimizer from the file's
    training config (checked above: Keras classes or custom_objects only), built, and its
    variables set by position, as Keras's own h5 loader does for the model that wrote them."""
    import h5py
    import keras
    try:
        model = keras.saving.load_model(os.fspath(src), custom_objects=custom_objects,
                                        compile=False, safe_mode=True)
        with h5py.File(src, "r") as f:
            training = json.loads(f.attrs["training_config"])
        opt = keras.optimizers.deserialize(training["optimizer_config"],
                                           custom_objects=custom_objects)
    except OptStateError:
        raise
    except Exception as e:
        raise UnsupportedError(f"Keras 3 could not rebuild the model from {os.fspath(src)} "
                               f"({type(e).__name__}: {e}).", path=os.fspath(src)) from e
    model.compile(optimizer=opt, loss=None)
    opt.build(model.trainable_variables)
    variables = _opt_variables(opt)
    if len(variables) != len(stored):
        raise _optimizer_error(f"the file holds {len(stored)} optimizer_weights arrays but the "
                               f"rebuilt optimizer has {len(variables)} variables.", src)
    for var, arr in zip(variables, stored):
        if tuple(var.shape) != arr.shape:
            raise _optimizer_error(f"optimizer variable {var.path} has shape "
                                   f"{tuple(var.shape)}, the file's array {arr.shape}.", src)
        var.assign(arr)
    return model


def _build_optimizer(model):
    opt = getattr(model, "optimizer", None)
    if opt is None:
        raise _model_error("model= has no optimizer: compile it with the optimizer that wrote "
                           "the checkpoint.", "")
    inner = opt
    while hasattr(inner, "inner_optimizer"):
        inner = inner.inner_optimizer
    if hasattr(inner, "_create_all_weights"):  # tf_keras legacy optimizers
        import tensorflow as tf
        with tf.init_scope():
            inner._create_all_weights(model.trainable_variables)
    elif not getattr(inner, "built", getattr(inner, "_built", False)):
        inner.build(model.trainable_variables)
    return opt


def _load_weights_h5(src, model):
    import h5py
    if model is None:
        raise _model_error(f"{os.fspath(src)} holds weights only, no model config: pass the "
                           "model that wrote it (compiled with its optimizer) as model=.", src)
    opt = _build_optimizer(model)
    with h5py.File(src, "r") as f:
        stored = _h5_optimizer_arrays(f, src)
        if stored is None:
            raise _optimizer_error(f"{os.fspath(src)} holds no optimizer state (tf_keras's "
                                   "weights files never do): nothing exact to convert.", src)
        stored = [np.asarray(a) for a in stored]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(os.fspath(src))
    except Exception as e:
        raise _model_error(f"the weights in {os.fspath(src)} do not load into model= "
                           f"({type(e).__name__}: {e}); pass the model that wrote them.",
                           src) from e
    _same_arrays(_opt_variables(opt), stored, "optimizer", src)
    return model


def _load_tf_checkpoint(src, model):
    import tensorflow as tf
    prefix = _tf_checkpoint_prefix(src)
    if model is None:
        raise _model_error(f"{os.fspath(src)} is a tf.train.Checkpoint, which holds no model "
                           "config: pass the model that wrote it (compiled with its "
                           "optimizer) as model=.", src)
    opt = _build_optimizer(model)
    keys = [k for k, _ in tf.train.list_variables(prefix)]
    tops = sorted({k.split("/")[0] for k in keys} - {"save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"})
    # Which of the checkpoint's top-level names is the model and which the optimizer is not
    # recorded anywhere but in the names; every candidate layout is tried and only one under
    # which every variable of the model and of its optimizer was matched is accepted.
    candidates = [lambda a=a, b=b: tf.train.Checkpoint(**{a: model, b: opt})
                  for a, b in itertools.permutations(tops, 2)]
    candidates.append(lambda: tf.train.Checkpoint(root=model))
    failures = []
    for make in candidates:
        ckpt = make()
        try:
            status = ckpt.read(prefix)
            status.expect_partial()  # only silences TensorFlow's warnings about the rest
            # every variable of model and optimizer that this layout reaches was matched ...
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, TypeError, tf.errors.OpError) as e:
            failures.append(str(e).splitlines()[0][:300])
            continue
        # ... and the layout reaches every one of them (else "matched" says nothing)
        unreached = _unreached(ckpt, model, opt)
        if unreached:
            failures.append(f"variables not reached: {unreached[:5]}")
            continue
        return model
    raise _model_error(f"{os.fspath(src)} does not restore every weight and optimizer variable "
                       "of model= under any layout (root=model, or its top-level names "
                       f"{tops} as model and optimizer): pass the model that wrote it. First "
                       f"failure: {failures[0] if failures else '?'}", src)


def _unreached(ckpt, model, opt):
    """Names of the model's and optimizer's variables the checkpoint's object graph misses."""
    import tensorflow as tf
    reached = set()
    for obj in tf.train.TrackableView(ckpt).descendants():
        reached.add(id(obj))
    inner = opt
    while hasattr(inner, "inner_optimizer"):
        inner = inner.inner_optimizer
    if hasattr(inner, "get_slot_names"):  # legacy slots hang off their weight, not the graph
        for w in model.trainable_variables:
            if id(w) in reached:
                for name in inner.get_slot_names():
                    try:
                        reached.add(id(inner.get_slot(w, name)))
                    except KeyError:
                        pass
    out = []
    for v in list(model.weights) + _opt_variables(opt):
        if id(v) not in reached and id(getattr(v, "value", None)) not in reached:
            out.append(getattr(v, "path", None) or v.name)
    return out


def _metadata(src, kind):
    return {"converted.from": os.path.basename(os.path.normpath(os.fspath(src))),
            "converted.kind": kind}


def convert(src, dst, *, model=None, custom_objects=None):
    """Convert the checkpoint ``src`` into the optstate archive ``dst`` (weights + optimizer).

    Returns ``dst``. ``model`` is needed for ``.weights.h5`` files and ``tf.train.Checkpoint``s
    (the compiled model that wrote them; the checkpoint is loaded into it);
    ``custom_objects`` maps class names to your classes for ``.keras``/``.h5`` files that name
    classes outside Keras.

    >>> # convert("run.keras", "run.optstate")                      # no code needed
    >>> # convert("ckpt/", "run.optstate", model=my_compiled_model)  # tf.train.Checkpoint
    """
    kind = source_kind(src)
    if kind == "keras":
        model = _load_keras(src, custom_objects)
    elif kind == "h5":
        model = _load_h5(src, custom_objects)
    elif kind == "weights.h5":
        model = _load_weights_h5(src, model)
    else:
        model = _load_tf_checkpoint(src, model)
    return write_archive(model, dst, metadata=_metadata(src, kind))


def write_archive(model, dst, *, metadata=None):
    """``export_state(model, dst, include_weights=True)`` with a progress bar on big states."""
    from ._keras_callback import live_state
    state = live_state(model, include_weights=True, metadata=metadata)
    total = _progress.state_bytes(state)
    with _progress.progress(total, f"writing {os.path.basename(os.fspath(dst))}") as bar:
        return osf.write(_progress.tracked(state, bar), dst)
