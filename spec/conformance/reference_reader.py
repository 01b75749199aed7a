"""The reference reader behind the protocol of README.md: ``reference_reader.py FILE``
prints the file's summary (SPEC.md 13.1) as JSON, or ``{"code": ..., "error": ...}`` when
the reader refuses the file. Run the vectors with it:

    python spec/conformance/run.py python spec/conformance/reference_reader.py
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout, installed or not

from optstate_format._check import summary  # noqa: E402
from optstate_format._errors import OptStateError  # noqa: E402


def main(argv) -> int:
    if len(argv) != 1:
        print("usage: reference_reader.py FILE", file=sys.stderr)
        return 2
    try:
        out = summary(argv[0])
    except OptStateError as e:
        out = {"code": e.code, "error": type(e).__name__}
    print(json.dumps(out, sort_keys=True, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
