"""Reading and writing the container (spec sections 3-9).

The file is valid safetensors: an 8-byte little-endian header length, a JSON
header, then the data buffer. The optstate header document is msgpack, stored
as the last tensor of the buffer (key ``optstate:header``, dtype U8).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np

from . import _dtypes, _registry
from ._errors import FormatError, IntegrityError, OptStateError, StorageError, VersionError
from ._registry import MULTI
from ._paths import HEADER_KEY, check_name, check_path, global_key, slot_key, value_key
from ._state import LazyTensor, OptimizerInfo, OptimizerState, WeightEntry
from ._versions import CURRENT_VERSION, FORMAT_ID, parse_version

try:
    # ISA-L's crc32 is zlib's function (same polynomial, same values: a test checks) with
    # SIMD carry-less multiplication: about 8x faster than zlib 1.2's here, which turns the
    # checksum of a 1 GB state from a quarter of a second into a thirtieth.
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - platforms without an isal wheel
    from zlib import crc32

# Reader limits (spec 9.3). A file past any of them is refused before allocation.
MAX_JSON_HEADER = 100 * 1024 * 1024
MAX_DOC_BYTES = 64 * 1024 * 1024
MAX_TENSORS = 4_000_000
MAX_RANK = 64
MAX_DEPTH = 32
META_FORMAT = "optstate.format"
META_VERSION = "optstate.version"
META_HEADER = "optstate.header"
META_HEADER_CRC = "optstate.header_crc32"
_ALIGN = 64
_LIB_VERSION = "0.1.0"


# ----------------------------------------------------------------------------- writing

def _canonical(obj, where="header"):
    """Data-only copy of ``obj`` with dict keys sorted (deterministic msgpack)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, where) for v in obj]
    if isinstance(obj, dict):
        out = {}
        for k in sorted(obj, key=str):
            if not isinstance(k, str):
                raise FormatError(f"{where}: map keys must be strings, got {k!r}.",
                                  code="E_SCHEMA")
            out[k] = _canonical(obj[k], f"{where}.{k}")
        return out
    raise FormatError(f"{where}: {type(obj).__name__} is not data (allowed: None, bool, int, "
                      "float, str, list, dict). Convert it to data before export.",
                      code="E_SCHEMA")


def _tensor_meta(source, what):
    if isinstance(source, LazyTensor):
        return tuple(source.shape), source.dtype
    arr = np.asarray(source)
    return tuple(arr.shape), _dtypes.name_of(arr.dtype)


def _plan(state: OptimizerState):
    """Validate ``state`` and list its tensors as (key, dtype, shape, source)."""
    tensors = []
    doc_weights = []
    seen = set()
    opt = state.optimizer
    if opt.components and opt.algorithm != MULTI:
        raise FormatError(f"components are only allowed with algorithm {MULTI!r}.",
                          code="E_SCHEMA")
    for w in sorted(state.weights, key=lambda w: w.path):
        check_path(w.path)
        if w.path in seen:
            raise FormatError(f"two weights share the canonical path {w.path!r}; each path "
                              "must be unique.", code="E_DUPLICATE_PATH", path=w.path)
        seen.add(w.path)
        shape = tuple(int(d) for d in w.shape)
        _dtypes.name_of(w.dtype)
        if opt.components and not 0 <= int(w.component) < len(opt.components):
            raise FormatError(f"component {w.component} is not one of the "
                              f"{len(opt.components)} components.", code="E_SCHEMA", path=w.path)
        alg = opt.algorithm_of(int(w.component))
        slots = {}
        for name in sorted(w.slots):
            check_name(name, "slot")
            sshape, sdtype = _tensor_meta(w.slots[name], name)
            expected = _registry.slot_shape(_registry.slot_rule(alg, name), shape)
            if expected is not None and sshape != expected:
                raise FormatError(f"slot {name!r} has shape {sshape}, expected {expected} "
                                  f"from weight shape {shape}.", code="E_SLOT_SHAPE",
                                  path=w.path)
            key = slot_key(w.path, name)
            slots[name] = key
            tensors.append((key, sdtype, sshape, w.slots[name]))
        vkey = None
        if w.value is not None:
            vshape, vdtype = _tensor_meta(w.value, "value")
            if vshape != shape:
                raise FormatError(f"weight value has shape {vshape}, expected {shape}.",
                                  code="E_VALUE_SHAPE", path=w.path)
            vkey = value_key(w.path)
            tensors.append((vkey, vdtype, vshape, w.value))
        entry = {"path": w.path, "shape": list(shape), "dtype": _dtypes.name_of(w.dtype),
                 "trainable": bool(w.trainable), "hints": dict(w.hints), "slots": slots,
                 "value": vkey}
        if opt.components:
            entry["component"] = int(w.component)
        doc_weights.append(entry)
    doc_globals = {}
    for name in sorted(state.globals):
        check_name(name, "global")
        gshape, gdtype = _tensor_meta(state.globals[name], name)
        key = global_key(name)
        doc_globals[name] = key
        tensors.append((key, gdtype, gshape, state.globals[name]))
    doc = {
        "format": FORMAT_ID,
        "version": f"{CURRENT_VERSION[0]}.{CURRENT_VERSION[1]}",
        "producer": {"library": "optstate-format", "library_version": _LIB_VERSION,
                     **dict(state.producer)},
        "optimizer": {"algorithm": opt.algorithm, "class_name": opt.class_name,
                      "module": opt.module, "hyperparameters": dict(opt.hyperparameters),
                      "learning_rate": dict(opt.learning_rate),
                      "wrappers": list(opt.wrappers),
                      **({"components": [dict(c) for c in opt.components]}
                         if opt.components else {})},
        "step": int(state.step),
        "globals": doc_globals,
        "weights": doc_weights,
        "checksum": "crc32",
        "checksums": {},
        "metadata": {str(k): str(v) for k, v in dict(state.metadata).items()},
    }
    if doc["step"] < 0:
        raise FormatError("step must be >= 0.", code="E_SCHEMA")
    # Data tensors sorted by (itemsize desc, key): every offset stays aligned.
    tensors.sort(key=lambda t: (-_dtypes.itemsize(t[1]), t[0]))
    return doc, tensors


def _as_bytes_view(arr: np.ndarray):
    flat = np.ascontiguousarray(arr).reshape(-1)
    return memoryview(flat.view(np.uint8))


def _container_header(entries, metadata):
    body = {"__metadata__": metadata}
    for key, dtype, shape, start, end in entries:
        body[key] = {"dtype": _dtypes.DTYPES[dtype][0], "shape": list(shape),
                     "data_offsets": [start, end]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _padded(header: bytes, size: int) -> bytes:
    return header + b" " * (size - len(header))


def write(state: OptimizerState, path, *, fsync: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically and deterministically; return the path.

    Tensors are fetched, checksummed and written one at a time (``LazyTensor``
    sources are fetched only when reached). The bytes go to a temporary file in
    the same folder which is fsynced and renamed over ``path``: an interrupted
    write never leaves a partial file under the final name.

    >>> import tempfile, os
    >>> st = OptimizerState(OptimizerInfo("sgd", "SGD"), step=1, weights=[
    ...     WeightEntry("dense/kernel", (2,), "float32",
    ...                 slots={"momentum": np.zeros(2, np.float32)})])
    >>> p = write(st, os.path.join(tempfile.mkdtemp(), "s.optstate"))
    >>> read(p).weight("dense/kernel").slots["momentum"].tolist()
    [0.0, 0.0]
    """
    path = Path(path)
    doc, tensors = _plan(state)
    entries, offset = [], 0
    for key, dtype, shape, _ in tensors:
        nbytes = math.prod(shape) * _dtypes.itemsize(dtype)
        entries.append((key, dtype, shape, offset, offset + nbytes))
        offset += nbytes
    data_len = offset
    # Reserve room for the container header with placeholder maxima, so it can be
    # written last, once the header tensor's length and checksum are known.
    meta_placeholder = {META_FORMAT: FORMAT_ID, META_VERSION: doc["version"],
                        META_HEADER: HEADER_KEY, META_HEADER_CRC: "ffffffff"}
    placeholder = _container_header(
        entries + [(HEADER_KEY, "uint8", (10 ** 15,), data_len, data_len + 10 ** 15)],
        meta_placeholder)
    reserved = len(placeholder)
    reserved += (-(8 + reserved)) % _ALIGN
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".optstate.tmp", dir=folder)
    except OSError as e:
        raise _storage_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.seek(8 + reserved)
            checksums = {}
            for (key, dtype, shape, source), (_, _, _, start, end) in zip(tensors, entries):
                arr = np.asarray(source)
                if tuple(arr.shape) != tuple(shape) or _dtypes.name_of(arr.dtype) != dtype:
                    raise FormatError(f"tensor source changed while writing: expected {dtype}"
                                      f"{list(shape)}, got {arr.dtype}{list(arr.shape)}.",
                                      code="E_SCHEMA", key=key)
                arr = arr.astype(_dtypes.storage_dtype(dtype), copy=False)
                view = _as_bytes_view(arr)
                checksums[key] = crc32(view)
                f.write(view)
                del arr, view
            doc["checksums"] = dict(sorted(checksums.items()))
            doc = _canonical(doc)
            blob = msgpack.packb(doc, use_bin_type=True)
            f.write(blob)
            meta = dict(meta_placeholder)
            meta[META_HEADER_CRC] = f"{crc32(blob):08x}"
            header = _container_header(
                entries + [(HEADER_KEY, "uint8", (len(blob),), data_len, data_len + len(blob))],
                meta)
            f.seek(0)
            f.write(struct.pack("<Q", reserved))
            f.write(_padded(header, reserved))
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, OptStateError):
            raise _storage_error(e, path) from e
        raise
    if fsync:
        try:
            dfd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - platform without directory fsync
            pass
    return path


def _storage_error(e: OSError, path: Path) -> StorageError:
    why = e.strerror or type(e).__name__
    if isinstance(e, IsADirectoryError) or path.is_dir():
        fix = "the path is a folder: name a file inside it"
    elif not path.parent.exists():
        fix = f"the folder {str(path.parent)!r} does not exist: create it first"
    else:
        fix = "check that the folder is writable and the disk has room"
    return StorageError(f"cannot write {str(path)!r}: {why}; {fix}. Nothing was left behind.",
                        errno=e.errno)


# ----------------------------------------------------------------------------- reading

def _fail(msg, code, **kw):
    raise FormatError(msg, code=code, **kw)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            _fail(f"container header repeats the key {k!r}.", "E_CONTAINER")
        out[k] = v
    return out


class _Container:
    """A parsed safetensors container: tensor table and the mapped data buffer."""

    def __init__(self, fileobj_path):
        self.path = str(fileobj_path)
        try:
            f = open(fileobj_path, "rb")
        except OSError as e:
            raise FormatError(f"cannot open {self.path!r}: {e.strerror}.", code="E_IO") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                _fail(f"file is {size} bytes; an optstate file starts with an 8-byte header "
                      "length. The file is truncated or not an optstate file.", "E_TRUNCATED")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > MAX_JSON_HEADER:
                _fail(f"container header declares {n} bytes; the limit is {MAX_JSON_HEADER}.",
                      "E_HEADER_BOUNDS")
            if 8 + n > size:
                _fail(f"container header declares {n} bytes but the file has only {size - 8} "
                      "after the length field: truncated, or not an optstate file.",
                      "E_HEADER_BOUNDS")
            raw = f.read(n)
            self.data_start = 8 + n
            self.data_len = size - 8 - n
            # MAP_POPULATE (Linux) maps every page in one call instead of one fault per page.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        try:
            text = raw.decode("utf-8")
            if not text.startswith("{"):
                raise ValueError("header does not start with '{'")
            table = json.loads(text, object_pairs_hook=_no_duplicates)
        except FormatError:
            raise
        except (ValueError, RecursionError) as e:
            _fail(f"container header is not valid JSON ({type(e).__name__}: {str(e)[:120]}).",
                  "E_CONTAINER")
        if not isinstance(table, dict):
            _fail("container header must be a JSON object.", "E_CONTAINER")
        meta = table.pop("__metadata__", None)
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            _fail("__metadata__ must map strings to strings.", "E_CONTAINER")
        self.metadata = meta
        if len(table) > MAX_TENSORS:
            _fail(f"{len(table)} tensors exceeds the limit of {MAX_TENSORS}.", "E_LIMIT")
        self.tensors = {}
        spans = []
        for key, info in table.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                _fail("tensor entry must have exactly dtype, shape and data_offsets.",
                      "E_CONTAINER", key=key)
            dtype = info["dtype"]
            shape = info["shape"]
            offs = info["data_offsets"]
            if not isinstance(dtype, str):
                _fail("tensor dtype must be a string.", "E_CONTAINER", key=key)
            name = _dtypes.from_code(dtype, key=key)
            if (not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                    type(d) is int and 0 <= d < 2 ** 53 for d in shape)):
                _fail(f"tensor shape must be a list of at most {MAX_RANK} non-negative "
                      f"integers; got {str(shape)[:80]}.", "E_CONTAINER", key=key)
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(type(o) is int and o >= 0 for o in offs)):
                _fail("data_offsets must be two non-negative integers.", "E_OFFSETS", key=key)
            start, end = offs
            nbytes = math.prod(shape) * _dtypes.itemsize(name)
            if end < start or end - start != nbytes:
                _fail(f"data_offsets {offs} span {end - start} bytes but dtype {dtype} and "
                      f"shape {shape} need {nbytes}.", "E_OFFSETS", key=key)
            if end > self.data_len:
                _fail(f"data_offsets end at {end}, past the {self.data_len}-byte data buffer: "
                      "the file is truncated.", "E_TRUNCATED", key=key)
            self.tensors[key] = (name, tuple(shape), start, end)
            spans.append((start, end, key))
        spans.sort()
        pos = 0
        for start, end, key in spans:
            if start != pos:
                kind = "overlaps the previous tensor" if start < pos else "leaves a gap"
                _fail(f"tensor starts at byte {start} but the previous one ends at {pos}: it "
                      f"{kind}. Tensors must tile the data buffer exactly.", "E_OFFSETS",
                      key=key)
            pos = end
        if pos != self.data_len:
            _fail(f"tensors cover {pos} bytes but the data buffer has {self.data_len}: "
                  "trailing bytes or truncation.", "E_OFFSETS")

    def raw(self, key) -> memoryview:
        _, _, start, end = self.tensors[key]
        if start == end:
            return memoryview(b"")
        return memoryview(self.mm)[self.data_start + start:self.data_start + end]

    def array(self, key) -> np.ndarray:
        name, shape, start, end = self.tensors[key]
        dt = _dtypes.storage_dtype(name)
        if start == end:
            return np.zeros(shape, dt)
        arr = np.frombuffer(self.mm, dtype=dt, count=math.prod(shape),
                            offset=self.data_start + start)
        return arr.reshape(shape)


def _req(doc, field, types, where="header"):
    if field not in doc:
        _fail(f"{where} lacks the required field {field!r}.", "E_SCHEMA")
    val = doc[field]
    if not isinstance(val, types) or (isinstance(val, bool) and bool not in (
            types if isinstance(types, tuple) else (types,))):
        _fail(f"{where}.{field} has type {type(val).__name__}; expected "
              f"{getattr(types, '__name__', types)}.", "E_SCHEMA")
    return val


def _depth_ok(obj, depth=0):
    if depth > MAX_DEPTH:
        return False
    if isinstance(obj, dict):
        return all(_depth_ok(v, depth + 1) for v in obj.values())
    if isinstance(obj, list):
        return all(_depth_ok(v, depth + 1) for v in obj)
    return True


def _ext_refused(code, data):
    raise ValueError("msgpack extension types are not allowed")


def _decode_doc(cont: _Container):
    meta = cont.metadata
    if meta.get(META_FORMAT) != FORMAT_ID:
        _fail(f"metadata {META_FORMAT!r} is {meta.get(META_FORMAT)!r}, expected {FORMAT_ID!r}: "
              "this is not an optstate file (a plain safetensors file, perhaps).",
              "E_NOT_OPTSTATE")
    version = parse_version(meta.get(META_VERSION))
    if version is None:
        raise VersionError(f"metadata {META_VERSION!r} is {meta.get(META_VERSION)!r}; expected "
                           "'MAJOR.MINOR'.", code="E_VERSION")
    if version[0] != CURRENT_VERSION[0]:
        raise VersionError(f"file format version {version[0]}.{version[1]} has major version "
                           f"{version[0]}; this reader implements major {CURRENT_VERSION[0]}. "
                           "Use a release of optstate-format that reads it.", code="E_VERSION")
    hkey = meta.get(META_HEADER)
    if hkey != HEADER_KEY or HEADER_KEY not in cont.tensors:
        _fail(f"the header tensor {HEADER_KEY!r} is missing.", "E_NOT_OPTSTATE")
    name, shape, start, end = cont.tensors[HEADER_KEY]
    if name != "uint8" or len(shape) != 1:
        _fail("the header tensor must be a 1-D U8 tensor.", "E_CONTAINER", key=HEADER_KEY)
    if end - start > MAX_DOC_BYTES:
        _fail(f"header document is {end - start} bytes; the limit is {MAX_DOC_BYTES}.",
              "E_LIMIT")
    raw = cont.raw(HEADER_KEY)
    crc = meta.get(META_HEADER_CRC)
    if not isinstance(crc, str) or len(crc) != 8:
        _fail(f"metadata {META_HEADER_CRC!r} must be 8 hex digits.", "E_CONTAINER")
    if f"{crc32(raw):08x}" != crc.lower():
        raise IntegrityError("the header document does not match its checksum: the file is "
                             "damaged. Restore it from a copy.", code="E_HEADER_CHECKSUM",
                             key=HEADER_KEY)
    try:
        doc = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True, use_list=True,
                              ext_hook=_ext_refused)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        _fail(f"header document is not valid msgpack ({type(e).__name__}: "
              f"{str(e)[:100] or 'undecodable bytes'}).",
              "E_HEADER_DECODE")
    if not isinstance(doc, dict):
        _fail("header document must be a map.", "E_SCHEMA")
    if not _depth_ok(doc):
        _fail(f"header document nests deeper than {MAX_DEPTH} levels.", "E_LIMIT")
    return doc, version


def _validate_doc(doc, cont: _Container, version):
    if _req(doc, "format", str) != FORMAT_ID:
        _fail("header format field disagrees with the container metadata.", "E_SCHEMA")
    if parse_version(_req(doc, "version", str)) != version:
        _fail("header version field disagrees with the container metadata.", "E_SCHEMA")
    producer = _req(doc, "producer", dict)
    opt = _req(doc, "optimizer", dict)
    algorithm = _req(opt, "algorithm", str, "optimizer")
    _req(opt, "class_name", str, "optimizer")
    components = opt.get("components", [])
    if not isinstance(components, list) or (components and algorithm != MULTI) or (
            algorithm == MULTI and not components):
        _fail(f"optimizer.components must be a non-empty array exactly when the algorithm is "
              f"{MULTI!r}.", "E_SCHEMA")
    for i, comp in enumerate(components):
        if not isinstance(comp, dict):
            _fail(f"optimizer.components[{i}] must be a map.", "E_SCHEMA")
        _req(comp, "algorithm", str, f"optimizer.components[{i}]")
        _req(comp, "class_name", str, f"optimizer.components[{i}]")
    for f, t in (("module", str), ("hyperparameters", dict), ("learning_rate", dict),
                 ("wrappers", list)):
        if f in opt:
            _req(opt, f, t, "optimizer")
    step = _req(doc, "step", int)
    if step < 0:
        _fail("step must be >= 0.", "E_SCHEMA")
    globals_ = _req(doc, "globals", dict)
    weights = _req(doc, "weights", list)
    if _req(doc, "checksum", str) != "crc32":
        _fail(f"checksum algorithm {doc['checksum']!r} is not supported (expected 'crc32').",
              "E_SCHEMA")
    checksums = _req(doc, "checksums", dict)
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        _fail("metadata must map strings to strings.", "E_SCHEMA")
    referenced = {}

    def ref(key, where):
        if not isinstance(key, str):
            _fail(f"{where}: tensor key must be a string.", "E_SCHEMA")
        if key not in cont.tensors or key == HEADER_KEY:
            _fail(f"{where} refers to tensor {key!r}, which the file does not contain.",
                  "E_DANGLING_KEY", key=key)
        if key in referenced:
            _fail(f"{where} refers to tensor {key!r}, already used by {referenced[key]}.",
                  "E_SCHEMA", key=key)
        referenced[key] = where
        return cont.tensors[key]

    for name, key in globals_.items():
        check_name(name, "global")
        ref(key, f"global {name!r}")
    seen = set()
    for i, w in enumerate(weights):
        where = f"weights[{i}]"
        if not isinstance(w, dict):
            _fail(f"{where} must be a map.", "E_SCHEMA")
        path = _req(w, "path", str, where)
        check_path(path)
        if path in seen:
            _fail(f"the canonical path {path!r} appears twice in the weight table.",
                  "E_DUPLICATE_PATH", path=path)
        seen.add(path)
        shape = _req(w, "shape", list, where)
        if len(shape) > MAX_RANK or not all(type(d) is int and 0 <= d < 2 ** 53 for d in shape):
            _fail(f"{where}.shape must be a list of non-negative integers.", "E_SCHEMA",
                  path=path)
        dtype = _req(w, "dtype", str, where)
        if dtype not in _dtypes.DTYPES:
            _fail(f"weight dtype {dtype!r} is not in the dtype table.", "E_DTYPE", path=path)
        _req(w, "trainable", bool, where)
        hints = _req(w, "hints", dict, where)
        for hk in ("structural", "name"):
            if hints.get(hk) is not None and not isinstance(hints[hk], str):
                _fail(f"{where}.hints.{hk} must be a string or nil.", "E_SCHEMA", path=path)
        slots = _req(w, "slots", dict, where)
        alg = algorithm
        if components:
            comp = _req(w, "component", int, where)
            if not 0 <= comp < len(components):
                _fail(f"{where}.component {comp} is not one of the {len(components)} "
                      "components.", "E_SCHEMA", path=path)
            alg = components[comp]["algorithm"]
        for sname, key in slots.items():
            check_name(sname, "slot")
            _, sshape, _, _ = ref(key, f"{where}.slots.{sname}")
            rule = _registry.slot_rule(alg, sname)
            expected = _registry.slot_shape(rule, shape)
            if expected is not None and tuple(sshape) != tuple(expected):
                _fail(f"slot {sname!r} has shape {list(sshape)} but the registry rule "
                      f"'{rule}' requires {list(expected)} for weight shape {shape}.",
                      "E_SLOT_SHAPE", path=path)
        vkey = w.get("value")
        if vkey is not None:
            vname, vshape, _, _ = ref(vkey, f"{where}.value")
            if list(vshape) != shape or vname != dtype:
                _fail(f"weight value is {vname}{list(vshape)}, expected {dtype}{shape}.",
                      "E_VALUE_SHAPE", path=path)
    for key in cont.tensors:
        if key != HEADER_KEY and key not in referenced:
            _fail(f"tensor {key!r} is not referenced by the header document.",
                  "E_UNREFERENCED", key=key)
        if key != HEADER_KEY and (key not in checksums or type(checksums[key]) is not int):
            _fail(f"tensor {key!r} has no crc32 in the checksum table.", "E_SCHEMA", key=key)
    if set(checksums) - set(referenced):
        _fail("the checksum table names tensors the file does not contain.", "E_SCHEMA")
    return producer


# Below this, threads cost more than they save (measured: 50 and 200 MB imports were
# 15% faster verified in one thread, 1 GB ones as fast).
_PARALLEL_VERIFY_BYTES = 512 * 1024 * 1024


def _verify(cont: _Container, checksums):
    """Check every tensor's crc32 (the checksum releases the GIL: large files use all cores)."""
    keys = sorted((k for k in cont.tensors if k != HEADER_KEY), key=lambda k: cont.tensors[k][2])
    crc = lambda k: crc32(cont.raw(k))  # noqa: E731
    if cont.data_len >= _PARALLEL_VERIFY_BYTES and (os.cpu_count() or 1) > 1:
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count())) as pool:
            sums = list(pool.map(crc, keys))
    else:
        sums = [crc(k) for k in keys]
    for key, value in zip(keys, sums):
        if value != checksums[key]:
            raise IntegrityError(f"tensor {key!r} does not match its crc32: its bytes are "
                                 "damaged. Restore the file from a copy.", code="E_CHECKSUM",
                                 key=key)


def _open(path, verify):
    cont = _Container(path)
    doc, version = _decode_doc(cont)
    _validate_doc(doc, cont, version)
    if verify:
        _verify(cont, doc["checksums"])
    return cont, doc, version


def read(path, *, verify: bool = True) -> OptimizerState:
    """Read an optstate file; return an :class:`OptimizerState` of read-only arrays.

    Arrays are views of the memory-mapped file (no copy). With ``verify=True``
    every tensor's crc32 is checked first; any damage raises
    :class:`IntegrityError` naming the tensor, any malformation :class:`FormatError`.

    >>> read("missing.optstate")
    Traceback (most recent call last):
    ...
    optstate_format._errors.FormatError: E_IO: cannot open 'missing.optstate': No such file or directory.
    """
    try:
        cont, doc, version = _open(path, verify)
    except OptStateError:
        raise
    except (MemoryError, OverflowError, ValueError, TypeError, OSError) as e:
        raise FormatError(f"file could not be parsed ({type(e).__name__}: {str(e)[:120]}).",
                          code="E_CONTAINER") from None
    opt = doc["optimizer"]
    info = OptimizerInfo(algorithm=opt["algorithm"], class_name=opt["class_name"],
                         module=opt.get("module", ""),
                         hyperparameters=opt.get("hyperparameters", {}),
                         learning_rate=opt.get("learning_rate", {}),
                         wrappers=opt.get("wrappers", []),
                         components=opt.get("components", []))
    weights = []
    for w in doc["weights"]:
        weights.append(WeightEntry(
            path=w["path"], shape=tuple(w["shape"]), dtype=w["dtype"],
            trainable=w["trainable"], hints=w["hints"], component=w.get("component", 0),
            slots={k: cont.array(v) for k, v in w["slots"].items()},
            value=cont.array(w["value"]) if w.get("value") is not None else None))
    return OptimizerState(
        optimizer=info, step=doc["step"], weights=weights,
        globals={k: cont.array(v) for k, v in doc["globals"].items()},
        producer=doc["producer"], metadata=doc.get("metadata", {}),
        version=f"{version[0]}.{version[1]}")


def read_header(path) -> dict:
    """The decoded header document of ``path`` (checked, tensors not verified)."""
    _, doc, _ = _open(path, verify=False)
    return doc
