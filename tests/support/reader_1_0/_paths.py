"""Canonical weight paths and tensor keys (spec section 5)."""

from __future__ import annotations

import re

from ._errors import FormatError

MAX_PATH_LEN = 1024
MAX_SEGMENTS = 64
_FORBIDDEN = re.compile(r"[/:#\x00-\x1f\x7f]")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
HEADER_KEY = "optstate:header"


def path_problem(path) -> str | None:
    """Why ``path`` is not a canonical weight path, or None if it is one.

    >>> path_problem("encoder/dense/kernel") is None
    True
    >>> path_problem("dense/kernel:0")
    "segment 'kernel:0' contains a forbidden character (':')"
    """
    if not isinstance(path, str) or not path:
        return "a path is a non-empty string"
    if len(path) > MAX_PATH_LEN:
        return f"longer than {MAX_PATH_LEN} characters"
    segments = path.split("/")
    if len(segments) > MAX_SEGMENTS:
        return f"more than {MAX_SEGMENTS} segments"
    for seg in segments:
        if seg in ("", ".", ".."):
            return f"empty, '.' or '..' segment in {path!r}"
        bad = _FORBIDDEN.search(seg)
        if bad:
            return f"segment {seg!r} contains a forbidden character ({bad.group()!r})"
    return None


def check_path(path, *, code="E_PATH"):
    problem = path_problem(path)
    if problem:
        raise FormatError(f"{path!r} is not a canonical weight path: {problem}. Paths are "
                          "'/'-separated segments without ':', '#' or control characters.",
                          code=code, path=path if isinstance(path, str) else None)


def check_name(name, what):
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise FormatError(f"{what} name {name!r} must match {NAME_RE.pattern}.", code="E_SCHEMA")


def sanitize_segment(name: str) -> str:
    """Make a framework layer/weight name a legal path segment (forbidden chars -> '_')."""
    seg = _FORBIDDEN.sub("_", str(name))
    return seg if seg not in ("", ".", "..") else f"_{seg}"


def slot_key(path, slot):
    return f"slot:{path}:{slot}"


def value_key(path):
    return f"weight:{path}"


def global_key(name):
    return f"global:{name}"
