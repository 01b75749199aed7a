"""Build hostile files: valid containers around chosen tables, documents and bytes.

Shared by the hostile-input, reader-edge and fuzz tests. Everything here writes bytes by
hand (struct, json, msgpack, zlib), never through the library under test, except
``good_bytes`` which starts from a file the writer made.
"""

import json
import struct
import zlib
from pathlib import Path

import msgpack
import numpy as np

import optstate_format as osf

from helpers import adam_state

HEADER = "optstate:header"


def good_bytes(tmp_path, state=None, name="good.optstate"):
    return osf.write(state or adam_state(n_weights=2), tmp_path / name, fsync=False).read_bytes()


def split(raw: bytes):
    """(container table as a dict, data buffer bytes)."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join_text(text: str, data: bytes) -> bytes:
    body = text.encode()
    body += b" " * ((-(8 + len(body))) % 8)
    return struct.pack("<Q", len(body)) + body + data


def join(table, data: bytes) -> bytes:
    return join_text(json.dumps(table, sort_keys=True, separators=(",", ":")), data)


def doc_of(raw: bytes) -> dict:
    table, data = split(raw)
    s, e = table[HEADER]["data_offsets"]
    return msgpack.unpackb(data[s:e], raw=False)


def with_blob(raw: bytes, blob: bytes) -> bytes:
    """Replace the header document's bytes (placed last), with a fresh header crc32."""
    table, data = split(raw)
    s, _ = table[HEADER]["data_offsets"]
    table[HEADER] = {"dtype": "U8", "shape": [len(blob)], "data_offsets": [s, s + len(blob)]}
    table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
    return join(table, data[:s] + blob)


def with_doc(raw: bytes, doc) -> bytes:
    return with_blob(raw, msgpack.packb(doc, use_bin_type=True))


def edit_doc(raw: bytes, edit) -> bytes:
    doc = doc_of(raw)
    edit(doc)
    return with_doc(raw, doc)


def container(tensors, meta=None, doc=None):
    """A container from {key: (dtype code, shape, bytes)} (+ a header document if given)."""
    table, data = {}, b""
    if meta is None:
        meta = {"optstate.format": "optstate", "optstate.version": "1.0",
                "optstate.header": HEADER}
    table["__metadata__"] = dict(meta)
    for key, (code, shape, payload) in tensors.items():
        table[key] = {"dtype": code, "shape": list(shape),
                      "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if doc is not None:
        blob = doc if isinstance(doc, bytes) else msgpack.packb(doc, use_bin_type=True)
        table[HEADER] = {"dtype": "U8", "shape": [len(blob)],
                         "data_offsets": [len(data), len(data) + len(blob)]}
        table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
        data += blob
    return join(table, data)


def minimal_doc(tensors):
    """A valid header document naming each of ``tensors`` ({key: bytes}) as a global."""
    return {"format": "optstate", "version": "1.0",
            "producer": {"library": "x", "library_version": "1"},
            "optimizer": {"algorithm": "sgd", "class_name": "SGD"}, "step": 0,
            "globals": {k.split(":", 1)[1]: k for k in tensors}, "weights": [],
            "checksum": "crc32", "checksums": {k: zlib.crc32(v) for k, v in tensors.items()}}


def globals_file(arrays, doc_edit=None):
    """A valid file whose tensors are globals ``{name: np.ndarray}`` (dtype code from numpy)."""
    codes = {np.dtype(v[1]).str: v[0] for v in osf._dtypes.DTYPES.values()}
    tensors = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        code = "BOOL" if arr.dtype == np.bool_ else codes[arr.dtype.str]
        tensors[f"global:{name}"] = (code, arr.shape, arr.tobytes())
    doc = minimal_doc({k: v[2] for k, v in tensors.items()})
    if doc_edit:
        doc_edit(doc)
    return container(tensors, doc=doc)


def damage_piece(archive, tensor, start, byte=1, mask=0x40):
    """Flip bits of one byte of the piece of ``tensor`` (spec 14.9) that starts at ``start``,
    in its shard; the index and the shard's header stay as they were."""
    doc = osf.read_header(archive)
    part = next(p for p in doc["archive"]["pieces"][tensor]["parts"]
                if list(p["start"]) == list(start))
    shard = Path(archive) / part["file"]
    raw = bytearray(shard.read_bytes())
    table, _ = split(bytes(raw))
    n = int.from_bytes(raw[:8], "little")
    raw[8 + n + table[part["key"]]["data_offsets"][0] + byte] ^= mask
    shard.write_bytes(bytes(raw))
