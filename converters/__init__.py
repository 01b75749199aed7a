"""Framework adapters, installed as ``optstate_format.converters``.

Each adapter only describes a live model/optimizer (canonical paths, identity
hints, graph, slots) and moves arrays; matching, validation and the file format
live in the core. Adapters are imported lazily, when a model of their framework
is seen.
"""



def _keras3():
    from . import keras3
    return keras3.ADAPTER


def _tf_keras():
    from . import tf_keras
    return tf_keras.ADAPTER


def _torch():
    from . import torch
    return torch.ADAPTER


# The top-level module of a model's class -> a loader of the adapter that handles it. The
# core looks a model up here (through its class's MRO) and imports the converter only then;
# each returns an ``optstate_format.adapter.Adapter``.
ADAPTERS = {
    "tf_keras": _tf_keras,
    "keras": _keras3,
    "torch": _torch,
}


def convert(src, dst, *, model=None, custom_objects=None):
    """Turn a checkpoint Keras wrote (``.keras``, ``.h5``, ``.weights.h5``, a
    ``tf.train.Checkpoint``) into an optstate archive: see ``_convert.convert``."""
    from ._convert import convert as run
    return run(src, dst, model=model, custom_objects=custom_objects)
