"""The error hierarchy. Every failure the library reports is one of these.

Each error carries a stable ``code`` (listed in spec/SPEC.md section 11), the
canonical ``path`` or tensor ``key`` involved when there is one, and a message
that says what was expected, what was received and how to fix it.
"""

from __future__ import annotations


class OptStateError(Exception):
    """Base class of every error raised by optstate_format."""

    default_code = "E_OPTSTATE"

    def __init__(self, message: str, *, code: str | None = None, path: str | None = None,
                 key: str | None = None):
        self.code = code or self.default_code
        self.path = path
        self.key = key
        self.msg = message
        where = ""
        if path is not None:
            where = f" [path={path!r}]"
        elif key is not None:
            where = f" [tensor={key!r}]"
        super().__init__(f"{self.code}: {message}{where}")


class FormatError(OptStateError, ValueError):
    """The file is not a well-formed optstate file (container or header)."""

    default_code = "E_FORMAT"


class VersionError(FormatError):
    """The file declares a format major version this reader does not implement."""

    default_code = "E_VERSION"


class IntegrityError(OptStateError, ValueError):
    """Stored bytes do not match their recorded checksum."""

    default_code = "E_CHECKSUM"


class MatchError(OptStateError, ValueError):
    """The file's weights cannot be matched to the target's without guessing.

    ``problems`` lists every problem found (one import reports them all at once);
    ``report`` is the :class:`ImportReport` built before the refusal.
    """

    default_code = "E_MATCH"

    def __init__(self, message: str, *, problems=(), report=None, code: str | None = None,
                 path: str | None = None):
        self.problems = list(problems)
        self.report = report
        if self.problems:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{message}\n{lines}"
        super().__init__(message, code=code, path=path)


class UnsupportedError(OptStateError, TypeError):
    """The model, optimizer or value is of a kind this version cannot handle."""

    default_code = "E_UNSUPPORTED"


class StorageError(OptStateError, OSError):
    """The destination cannot be written (missing folder, a folder at the path, no
    permission, disk full). Also an ``OSError``; ``errno`` is the system's."""

    default_code = "E_WRITE"

    def __init__(self, message: str, *, errno: int | None = None, code: str | None = None,
                 path: str | None = None):
        super().__init__(message, code=code, path=path)
        self.errno = errno
