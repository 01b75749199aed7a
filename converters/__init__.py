"""Framework adapters, installed as ``optstate_format.converters``.

Each adapter only describes a live model/optimizer (canonical paths, identity
hints, graph, slots) and moves arrays; matching, validation and the file format
live in the core. Adapters are imported lazily, when a model of their framework
is seen.
"""

# The top-level module of a model's class -> the converter module that handles it. The
# core looks a model up here (through its class's MRO) and imports the module only then;
# each module exposes ``ADAPTER``, an ``optstate_format.adapter.Adapter``.
ADAPTERS = {
    "tf_keras": "tf_keras",
    "keras": "keras3",
    "torch": "torch",
}
