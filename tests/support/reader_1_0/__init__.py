"""The format 1.0 reader exactly as released (library 0.1.0), importable as ``reader_1_0``.

See README.md beside this file: the modules are copied byte for byte from the last commit
whose ``optstate_format/_versions.py`` declared format 1.0; only this file is new.
"""

from ._check import summarize
from ._errors import FormatError, IntegrityError, OptStateError, VersionError
from ._io import read, read_header
from ._versions import CURRENT_VERSION, VERSION_TABLE

__all__ = ["read", "read_header", "summarize", "OptStateError", "FormatError",
           "IntegrityError", "VersionError", "CURRENT_VERSION", "VERSION_TABLE"]
