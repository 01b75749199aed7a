"""Coverage-guided fuzzing of the reader with atheris (libFuzzer).

    python tests/fuzz_atheris.py -runs=100000 CORPUS_DIR

Any exception other than an OptStateError is a crash. test_fuzz_atheris.py runs a short
campaign seeded with the conformance vectors.
"""

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import optstate_format as osf

_PATH = os.path.join(tempfile.mkdtemp(prefix="optstate-fuzz-"), "input.optstate")


def test_one_input(data: bytes):
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        osf.read(_PATH)
    except osf.OptStateError:
        pass
    osf.check(_PATH)  # never raises: a report either way


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
