"""One seam for the private names a converter relies on.

Keras keeps the facts a converter needs (a layer's call nodes, an optimizer's
per-variable lists, tf_keras's slot dictionary) behind private names. Each
converter declares every such name once, in its own :class:`PrivateAPI` table,
and reaches them only through it. A name missing at first use means the
framework changed: the converter stops with :class:`UnsupportedError` naming
the framework version, the missing piece and the supported range, instead of
falling back to a form that would write a valid file with the wrong names.
"""

from __future__ import annotations

import importlib

from optstate_format._errors import UnsupportedError


class PrivateAPI:
    """The private attributes and modules one framework's converter uses.

    >>> api = PrivateAPI("toy", "1.0", ">=1.0", attrs={"_nodes": "a layer's call nodes"})
    >>> class L: _nodes = [1]
    >>> api.get(L(), "_nodes")
    [1]
    >>> api.get(object(), "_nodes")
    Traceback (most recent call last):
    ...
    optstate_format._errors.UnsupportedError: E_UNSUPPORTED: toy 1.0 changed: object has no '_nodes' (a layer's call nodes). This converter supports toy >=1.0; install a version in that range or report it.
    >>> api.load("os:system")  # only names from the converter's own table are ever imported
    Traceback (most recent call last):
    ...
    AssertionError: 'os:system' is not in the toy private-name table
    """

    def __init__(self, framework: str, version: str, supported: str, *, attrs=None,
                 modules=None):
        self.framework = framework
        self.version = version
        self.supported = supported
        self.attrs = dict(attrs or {})      # attribute name -> what it holds
        self.modules = dict(modules or {})  # "module:name" -> what it is

    def changed(self, what: str):
        raise UnsupportedError(
            f"{self.framework} {self.version} changed: {what}. This converter supports "
            f"{self.framework} {self.supported}; install a version in that range or report it.")

    def get(self, obj, name: str, *default):
        """``obj.<name>``, a name from the table; missing -> UnsupportedError (or ``default``
        where the table says the attribute is optional and the caller passes one)."""
        if name not in self.attrs:
            raise AssertionError(f"{name!r} is not in the {self.framework} private-name table")
        try:
            return getattr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            self.changed(f"{type(obj).__name__} has no {name!r} ({self.attrs[name]})")

    def has(self, obj, name: str) -> bool:
        if name not in self.attrs:
            raise AssertionError(f"{name!r} is not in the {self.framework} private-name table")
        return hasattr(obj, name)

    def load(self, ref: str):
        """An object from a private module, ``"package.module:Name"`` from the table."""
        if ref not in self.modules:
            raise AssertionError(f"{ref!r} is not in the {self.framework} private-name table")
        mod, _, name = ref.partition(":")
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            self.changed(f"{ref} is missing ({self.modules[ref]})")
