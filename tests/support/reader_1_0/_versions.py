"""Released format versions. Mirrored by spec/SPEC.md section 10 (a test keeps them in step)."""

FORMAT_ID = "optstate"
CURRENT_VERSION = (1, 0)
CURRENT_VERSION_STR = "1.0"

# (format version, released, library version that first wrote it, summary)
VERSION_TABLE = [
    ("1.0", "2026-11-27", "0.1.0", "Initial release."),
]


def parse_version(text):
    """Parse ``"MAJOR.MINOR"`` into a tuple of ints, or return None if malformed."""
    if not isinstance(text, str) or text.count(".") != 1 or len(text) > 16:
        return None
    major, minor = text.split(".")
    if not (major.isdigit() and minor.isdigit() and major.isascii() and minor.isascii()):
        return None
    return int(major), int(minor)
