"""Framework adapters, installed as ``optstate_format.converters``.

Each adapter only describes a live model/optimizer (canonical paths, identity
hints, graph, slots) and moves arrays; matching, validation and the file format
live in the core. Adapters are imported lazily, when a model of their framework
is seen.
"""
