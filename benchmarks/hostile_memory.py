"""Peak memory and time of `optstate check` on the worst files within the reader's limits.

    python benchmarks/hostile_memory.py [--only NAME] [--keep DIR]

Each file is built here, then checked in a fresh child process that reports its peak RSS
(VmHWM of /proc/self/status, Linux) above its RSS after importing the library. The files are the audit's
classes of issue 17 pushed to the limits of spec 9.3: a 64 MiB header document of tiny
values, one of empty maps, a 100 MiB container header of the most tensors it can hold (each
named by the document), JSON floods, a sparse file declaring 8 GiB. Never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import msgpack

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from optstate_format import _header, _io  # noqa: E402

from crafting import doc_of, good_bytes, join, split, with_blob  # noqa: E402
from helpers import adam_state  # noqa: E402

META = {"optstate.format": "optstate", "optstate.version": "1.0",
        "optstate.header": "optstate:header"}


def _add_field(doc_blob: bytes, key: str, value_bytes: bytes) -> bytes:
    """Append one field (already packed) to a packed fixmap document."""
    assert 0x80 <= doc_blob[0] < 0x8f
    return bytes([doc_blob[0] + 1]) + doc_blob[1:] + msgpack.packb(key) + value_bytes


def _array_header(n):
    return b"\xdd" + struct.pack(">I", n)


def doc_of_tiny_strings(base):
    """A valid file whose document has an unknown field: the most 2-char strings allowed."""
    n = _header.MAX_DOC_VALUES - 2000
    blob = msgpack.packb(doc_of(base), use_bin_type=True)
    return with_blob(base, _add_field(blob, "junk", _array_header(n) + b"\xa2ab" * n))


def doc_of_empty_maps(base):
    """The most empty maps allowed, then a flood that crosses the container limit."""
    n = 64 * 1024 * 1024 - 4096
    blob = msgpack.packb(doc_of(base), use_bin_type=True)
    return with_blob(base, _add_field(blob, "junk", _array_header(n) + b"\x80" * n))


def most_tensors(base):
    """A 100 MiB container header of as many tensors as the document can name (1 byte each
    or zero bytes, half and half), every one referenced and checksummed: a valid file."""
    budget_json, budget_doc = _io.MAX_JSON_HEADER - 4096, _header.MAX_DOC_BYTES - 4096
    per_json = len('"global:g0000000":{"data_offsets":[10000000,10000001],"dtype":"U8",'
                   '"shape":[1]},')
    per_doc = len(msgpack.packb({"g0000000": "global:g0000000"})) + len(
        msgpack.packb({"global:g0000000": 4294967295})) - 2
    n = min(budget_json // per_json, budget_doc // per_doc)
    table, data, globals_, sums = {"__metadata__": dict(META)}, bytearray(), {}, {}
    for i in range(n):
        key = f"global:g{i:07d}"
        payload = b"\x01" if i % 2 else b""
        table[key] = {"dtype": "U8", "shape": [len(payload)],
                      "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
        globals_[f"g{i:07d}"] = key
        sums[key] = zlib.crc32(payload)
    doc = {"format": "optstate", "version": "1.0",
           "producer": {"library": "x", "library_version": "1"},
           "optimizer": {"algorithm": "sgd", "class_name": "SGD"}, "step": 0,
           "globals": globals_, "weights": [], "checksum": "crc32", "checksums": sums}
    blob = msgpack.packb(doc, use_bin_type=True)
    table["optstate:header"] = {"dtype": "U8", "shape": [len(blob)],
                                "data_offsets": [len(data), len(data) + len(blob)]}
    table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
    return join(table, bytes(data) + blob), n


def json_flood(base, token):
    """A 100 MiB container header whose first entry holds a flood of ``token``."""
    table, data = split(base)
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    key = '"global:iterations":{'
    n = (_io.MAX_JSON_HEADER - len(text) - 64) // len(token)
    text = text.replace(key, key + '"junk":[' + token * n + "0],", 1)
    body = text.encode()
    return struct.pack("<Q", len(body)) + body + data


def sparse(folder):
    size = 8 << 30
    table = {"__metadata__": dict(META),
             "global:big": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}
    blob = msgpack.packb({"format": "optstate", "version": "1.0"})
    table["optstate:header"] = {"dtype": "U8", "shape": [len(blob)],
                                "data_offsets": [size, size + len(blob)]}
    table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
    head = join(table, b"")
    p = folder / "sparse_8GiB.optstate"
    with open(p, "wb") as f:
        f.write(head)
        f.seek(len(head) + size)
        f.write(blob)
    return p


# Peak = VmHWM (the child's own high-water mark) minus its RSS after imports. Not
# getrusage's ru_maxrss: on Linux a child made by fork+exec starts with its parent's peak.
CHILD = """
import sys, time
import optstate_format as osf
def kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
base = kb("VmRSS")
t = time.perf_counter()
rep = osf.check(sys.argv[1])
dt = time.perf_counter() - t
print(rep.code or "valid", round((kb("VmHWM") - base) / 1024), round(dt, 2))
"""


def measure(path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, check=True)
    code, mb, sec = out.stdout.split()
    return code, int(mb), float(sec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--keep")
    args = ap.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="hostile-"))
    folder.mkdir(parents=True, exist_ok=True)
    base = good_bytes(folder, adam_state(n_weights=2), "base.optstate")
    builders = {
        "doc_8M_tiny_strings": lambda: doc_of_tiny_strings(base),
        "doc_64MiB_empty_maps": lambda: doc_of_empty_maps(base),
        "json_100MiB_of_{}": lambda: json_flood(base, "{},"),
        "json_100MiB_of_[]": lambda: json_flood(base, "[],"),
        "json_100MiB_of_strings": lambda: json_flood(base, '"ab",'),
        "most_tensors_valid": lambda: most_tensors(base),
        "sparse_8GiB": None,
    }
    print(f"{'file':24s} {'size':>10s} {'result':>14s} {'peak RSS':>9s} {'time':>7s}")
    for name, build in builders.items():
        if args.only and args.only != name:
            continue
        if build is None:
            p = sparse(folder)
            extra = ""
        else:
            raw = build()
            if isinstance(raw, tuple):
                raw, n = raw
                extra = f" ({n} tensors)"
            else:
                extra = ""
            p = folder / f"{name}.optstate"
            p.write_bytes(raw)
            del raw
        code, mb, sec = measure(p)
        size = p.stat().st_size
        print(f"{name:24s} {size / 2 ** 20:8.1f}Mi {code:>14s} {mb:7d}MB {sec:6.2f}s{extra}")
        if not args.keep:
            p.unlink()


if __name__ == "__main__":
    main()
