"""Coverage-guided fuzzing of the reader with atheris (libFuzzer).

    python tests/fuzz_atheris.py -runs=100000 CORPUS_DIR

Any exception other than an OptStateError is a crash, and so is an OptStateError with the
code E_FORMAT (the reader's wrapper around a foreign exception). test_fuzz_atheris.py runs a
short campaign seeded with the conformance vectors.

The first byte of an input chooses how the rest is used (structure-aware: issue 17):
  0 (and any input of 1 byte): the whole input is the file;
  1: the rest is the header document's msgpack, stored in a valid container with a correct
     header crc32 (so the fuzzer reaches the decoder's limits and the validation);
  2: the rest is the container header's JSON text, before a valid data buffer;
  3: the second byte picks a field of a valid header document, the rest (decoded as msgpack
     when it can be: ext types, bin, timestamps and all) becomes its value.
Seeds for modes 1-3 are added to each corpus folder given on the command line.
"""

import contextlib
import io
import os
import struct
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import optstate_format as osf
    from optstate_format.cli import main as cli_main

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from crafting import doc_of, split, with_blob  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="optstate-fuzz-")
_PATH = os.path.join(_DIR, "input.optstate")


def _template():
    st = osf.OptimizerState(
        osf.OptimizerInfo("adam", "Adam", "keras.optimizers", {"beta_1": 0.9},
                          {"kind": "constant", "value": 0.001}),
        step=3, globals={"iterations": np.array(3, np.int64),
                         "flags": np.array([True, False])},
        weights=[osf.WeightEntry("dense/kernel", (2, 2), "float32", value=np.ones((2, 2),
                                                                                np.float32),
                                 slots={"m": np.zeros((2, 2), np.float32),
                                        "v": np.ones((2, 2), np.float32)},
                                 hints={"structural": None, "name": "dense/kernel"})])
    return osf.write(st, os.path.join(_DIR, "template.optstate"), fsync=False).read_bytes()


TEMPLATE = _template()
TABLE, DATA = split(TEMPLATE)
DOC = doc_of(TEMPLATE)
SPOTS = [(), ("format",), ("version",), ("producer",), ("producer", "library"),
         ("optimizer",), ("optimizer", "learning_rate"), ("optimizer", "wrappers"),
         ("optimizer", "components"), ("optimizer", "hyperparameters", "x"), ("step",),
         ("globals",), ("globals", "flags"), ("weights",), ("weights", 0),
         ("weights", 0, "path"), ("weights", 0, "shape"), ("weights", 0, "dtype"),
         ("weights", 0, "hints"), ("weights", 0, "slots"), ("weights", 0, "value"),
         ("weights", 0, "component"), ("checksum",), ("checksums",), ("metadata",)]


def _structured(mode, rest):
    """The file bytes for a structured input, or None when the harness cannot build one."""
    if mode == 1:
        return with_blob(TEMPLATE, rest)
    if mode == 2:  # the bytes as given (not necessarily UTF-8), padded as a writer pads
        body = rest + b" " * ((-(8 + len(rest))) % 8)
        return struct.pack("<Q", len(body)) + body + DATA
    if not rest:
        return None
    spot = SPOTS[rest[0] % len(SPOTS)]
    try:
        value = msgpack.unpackb(rest[1:], raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - not msgpack: use the bytes themselves
        value = rest[1:]
    doc = msgpack.unpackb(msgpack.packb(DOC), raw=False)
    obj = doc
    try:
        for k in spot[:-1]:
            obj = obj[k]
        if spot:
            obj[spot[-1]] = value
        else:
            doc = value
        blob = msgpack.packb(doc, use_bin_type=True, strict_types=False)
    except Exception:  # noqa: BLE001 - the harness could not place it
        return None
    return with_blob(TEMPLATE, blob)


def test_one_input(data: bytes):
    mode = data[0] % 4 if len(data) > 1 else 0
    raw = data if mode == 0 else _structured(mode, data[1:])
    if raw is None:
        return
    with open(_PATH, "wb") as f:
        f.write(raw)
    try:
        osf.read(_PATH)
    except osf.OptStateError as e:
        if e.code == "E_FORMAT":  # a foreign exception the reader wrapped: a crash
            raise RuntimeError(f"foreign exception inside the reader: {e}") from e
        return
    rep = osf.check(_PATH)  # never raises: a report either way
    if rep.code == "E_FORMAT":
        raise RuntimeError(f"foreign exception inside check: {rep.message}")
    if mode:  # a file the reader accepts: the CLI must print it (odd values and all)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
                io.StringIO()):
            cli_main(["inspect", "--json", _PATH])


def _add_seeds(argv):
    """Seeds for the structured modes, written into each corpus folder named in argv."""
    seeds = {"seed-doc": b"\x01" + msgpack.packb(DOC, use_bin_type=True),
             "seed-table": b"\x02" + TEMPLATE[8:8 + int.from_bytes(TEMPLATE[:8], "little")],
             "seed-field-lr": b"\x03\x06" + msgpack.packb({"kind": "evil"}),
             "seed-field-ext": b"\x03\x09" + msgpack.packb(msgpack.Timestamp(1, 0)),
             "seed-field-bin": b"\x03\x0f" + msgpack.packb(b"\x00\x01", use_bin_type=True)}
    for arg in argv[1:]:
        if not arg.startswith("-") and os.path.isdir(arg):
            for name, blob in seeds.items():
                with open(os.path.join(arg, name), "wb") as f:
                    f.write(blob)


if __name__ == "__main__":
    _add_seeds(sys.argv)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
