"""Released format versions. Mirrored by spec/SPEC.md section 10 (a test keeps them in step)."""

# The library's own version: the one place it is written (pyproject reads it, the writer
# records it as producer.library_version).
LIBRARY_VERSION = "0.3.0"

FORMAT_ID = "optstate"
CURRENT_VERSION = (1, 2)
CURRENT_VERSION_STR = "1.2"

# (format version, released, library version that first wrote it, summary)
VERSION_TABLE = [
    ("1.0", "2026-11-27", "0.1.0", "Initial release."),
    ("1.1", "2026-11-28", "0.2.0", "Generated weight names are roles, not identities; new "
     "hint `structural_in`; two-ended alignment; opt-in resize."),
    ("1.2", "2026-11-28", "0.3.0", "The header document attests the container's tensor table "
     "(`table_crc32`, required); the summary, the order of checks and a code for every MUST "
     "are normative; conformance runner; sharded archives (a folder, written by one or many "
     "processes)."),
]


_NUMBER = frozenset("0123456789")


def parse_version(text):
    """Parse ``"MAJOR.MINOR"`` into a tuple of ints, or return None if malformed.

    Each part is ``0`` or ASCII digits without a leading zero (spec 10): ``01.0``, ``1.0.0``,
    ``1`` and ``+1.0`` are malformed.

    >>> parse_version("1.12"), parse_version("01.0"), parse_version("1.0.0")
    ((1, 12), None, None)
    """
    if not isinstance(text, str) or text.count(".") != 1 or len(text) > 16:
        return None
    parts = text.split(".")
    for part in parts:
        if not part or not set(part) <= _NUMBER or (len(part) > 1 and part[0] == "0"):
            return None
    return int(parts[0]), int(parts[1])
