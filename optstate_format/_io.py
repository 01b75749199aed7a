"""Reading and writing the container (spec sections 3-9).

The file is valid safetensors: an 8-byte little-endian header length, a JSON
header, then the data buffer. The optstate header document is msgpack, stored
as the last tensor of the buffer (key ``optstate:header``, dtype U8).

The reader never maps the file. It reads the container header, parses it with a
strict parser that builds only the tensor table (no generic JSON tree), checks
format and version, validates the table and the header document, and only then
reads each tensor with ``preadv`` into a private array, computing its crc32 over
that array: the bytes checked are the bytes handed out, and a file truncated or
rewritten by another process gives an error, never a crash or unchecked values.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import stat
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np

from . import _dtypes, _header
from ._errors import FormatError, IntegrityError, OptStateError, StorageError, VersionError
from ._paths import HEADER_KEY, global_key, slot_key, value_key
from ._state import LazyTensor, OptimizerInfo, OptimizerState, Regions, WeightEntry
from ._versions import CURRENT_VERSION, FORMAT_ID, LIBRARY_VERSION, parse_version

try:
    # ISA-L's crc32 is zlib's function (same polynomial, same values: a test checks) with
    # SIMD carry-less multiplication: about 8x faster than zlib 1.2's here, which turns the
    # checksum of a 1 GB state from a quarter of a second into a thirtieth.
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - platforms without an isal wheel
    from zlib import crc32

# Reader limits (spec 9.3). Module variables, so that tests can lower them. The header
# document's own limits are in _header (MAX_DOC_BYTES, MAX_DOC_VALUES, MAX_DEPTH...).
MAX_JSON_HEADER = 100 * 1024 * 1024
MAX_TENSORS = 4_000_000
MAX_METADATA_ENTRIES = 1024
# Zero-byte tensors carry no data but cost memory to describe; at most this many plus one
# per tensor that holds data (spec 9.3).
MAX_EMPTY_TENSORS = 4096
META_FORMAT = "optstate.format"
META_VERSION = "optstate.version"
META_HEADER = "optstate.header"
META_HEADER_CRC = "optstate.header_crc32"
_ALIGN = 64
_LIB_VERSION = LIBRARY_VERSION
# Temporary files of a writer that died are removed by the next write to the same name once
# they are this old and their writer's process is gone (spec 9.4).
STALE_TEMP_SECONDS = 15 * 60
# Tensors are read and checksummed in chunks of this size (the chunk is still in cache when
# its crc32 is computed: measured faster than one read and one checksum of the whole tensor).
_READ_CHUNK = 4 * 1024 * 1024
# Tensors up to this size that lie back to back are read together, up to _READ_CHUNK at once.
_SMALL_TENSOR = 64 * 1024
# From this many data bytes, tensors are read and checksummed by several threads (preadv
# and the crc32 release the GIL). Most of a large read is spent faulting in the new memory
# the arrays live in, and threads fault side by side: measured on the project machine (2
# cores), importing Adam state into a trained Keras model with memory in the state a user's
# import meets (freed seconds before) took, threads against one thread, 66 against 98 ms at
# 50 MB, 171 against 474 ms at 202 MB, 645 against 1908 ms at 1 GB (median of 5; the
# procedure is BENCHMARKS.md's `--settle`). Below this size a thread costs more than it saves.
_PARALLEL_VERIFY_BYTES = 16 * 1024 * 1024


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


def _tensor_meta(source):
    if isinstance(source, LazyTensor):
        return tuple(source.shape), _dtypes.name_of(source.dtype)
    arr = np.asarray(source)
    return tuple(arr.shape), _dtypes.name_of(arr.dtype)


def _plan(state: OptimizerState):
    """The header document of ``state`` and its tensors as (key, dtype, shape, source).

    The document is checked by the reader's own validation (:func:`_header.validate`)
    before a byte is written, so the writer cannot produce a file the reader refuses.
    """
    tensors = []
    doc_weights = []
    opt = state.optimizer
    for w in sorted(state.weights, key=lambda w: str(w.path)):
        shape = [int(d) for d in w.shape]
        slots = {}
        for name in sorted(w.slots, key=str):
            sshape, sdtype = _tensor_meta(w.slots[name])
            key = slot_key(w.path, name)
            slots[name] = key
            tensors.append((key, sdtype, sshape, w.slots[name]))
        vkey = None
        if w.value is not None:
            vshape, vdtype = _tensor_meta(w.value)
            vkey = value_key(w.path)
            tensors.append((vkey, vdtype, vshape, w.value))
        entry = {"path": w.path, "shape": shape, "dtype": _dtypes.name_of(w.dtype),
                 "trainable": bool(w.trainable), "hints": dict(w.hints), "slots": slots,
                 "value": vkey}
        if opt.components:
            entry["component"] = int(w.component)
        doc_weights.append(entry)
    doc_globals = {}
    for name in sorted(state.globals, key=str):
        gshape, gdtype = _tensor_meta(state.globals[name])
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
        "step": state.step,
        "globals": doc_globals,
        "weights": doc_weights,
        "checksum": "crc32",
        "checksums": {},
        "metadata": {str(k): str(v) for k, v in dict(state.metadata).items()},
    }
    doc = _canonical(doc)
    table = {}
    for key, dtype, shape, _ in tensors:
        if key in table:  # two weights with one path: validate() names it
            continue
        table[key] = (dtype, shape)
    # Checksums are known only once the bytes are written; validate with placeholders.
    doc["checksums"] = {key: 0 for key in table}
    # The container's dtypes and shapes, attested by the checksummed document (spec 3.6).
    doc[_header.TABLE_FIELD] = _header.table_crc32(table)
    doc = dict(sorted(doc.items()))
    _header.validate(doc, table, CURRENT_VERSION)
    _check_empty_tensors(sum(1 for _, shape in table.values() if 0 in shape), len(table))
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


# Temporary files are named .<name>.<host>-<pid>.<random>.optstate.tmp: a later write to the
# same name removes those whose writer (same host, that pid) is gone (spec 9.4).
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_TAIL = re.compile(r"([0-9a-f]{8})-([0-9]{1,10})\.[A-Za-z0-9_]+\.optstate\.tmp")


def _temp_prefix(name: str) -> str:
    return f".{name[:100]}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _remove_stale_temps(folder: Path, name: str) -> list:
    """Remove temporary files left by killed writes of ``name``; return the names removed.

    Only files of this host whose writer process no longer exists and which were last
    modified more than STALE_TEMP_SECONDS ago: a live writer, a writer on another host
    sharing the folder, or a recycled pid are never touched.
    """
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return []
    prefix, removed, now = _temp_prefix(name), [], time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        n = entry.name
        if not (n.startswith(prefix) and n.endswith(".optstate.tmp")):
            continue
        m = _TEMP_TAIL.fullmatch(n[len(prefix):])
        if not m or m.group(1) != _HOST:
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= STALE_TEMP_SECONDS:
                os.unlink(entry.path)
                removed.append(n)
        except OSError:
            continue
    return removed


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # pragma: no cover - systems without /proc
    os.umask(old)
    return old


def _file_mode(path: Path) -> int:
    """The mode a new archive gets: the replaced file's permissions, else 0666 & ~umask."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode) & 0o777
    except OSError:
        pass
    return 0o666 & ~_umask()


def write(state: OptimizerState, path, *, fsync: bool = True, max_shard_size=None) -> Path:
    """Write ``state`` to ``path`` atomically and deterministically; return the path.

    With ``max_shard_size`` (bytes of tensor data per shard), ``path`` becomes a sharded
    archive: a folder of shard files and an index, committed as a whole (spec section 14;
    :func:`optstate_format._archive.write_archive`). ``read``, ``check`` and
    ``import_state`` accept the folder.

    Tensors are fetched, checksummed and written one at a time (``LazyTensor``
    sources are fetched only when reached). The bytes go to a temporary file in
    the same folder (``.<name>.<host>-<pid>.<random>.optstate.tmp``) which is
    fsynced and renamed over ``path``: an interrupted write never leaves a partial
    file under the final name, and the next write to the same name removes
    temporary files of killed writers (spec 9.4). The archive gets the permissions
    of the file it replaces, or those of a new file (``0666 & ~umask``).

    >>> import tempfile, os
    >>> st = OptimizerState(OptimizerInfo("sgd", "SGD"), step=1, weights=[
    ...     WeightEntry("dense/kernel", (2,), "float32",
    ...                 slots={"momentum": np.zeros(2, np.float32)})])
    >>> p = write(st, os.path.join(tempfile.mkdtemp(), "s.optstate"))
    >>> read(p).weight("dense/kernel").slots["momentum"].tolist()
    [0.0, 0.0]
    """
    if max_shard_size is not None:  # a sharded archive (spec 14)
        from ._archive import write_archive
        return write_archive(state, path, max_shard_size=max_shard_size, fsync=fsync)
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
    mode = _file_mode(path)
    _remove_stale_temps(folder, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path.name)}{_HOST}-{os.getpid()}.",
                                   suffix=".optstate.tmp", dir=folder)
    except OSError as e:
        raise _storage_error(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:  # pragma: no cover - Windows
                os.chmod(tmp, mode)
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
        _fsync_dir(folder)
    return path


def _fsync_dir(folder):
    """Make a rename in ``folder`` durable (where the platform can fsync a directory)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platform without directory fsync
        pass


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


_NOT_OURS = ("not an optstate or safetensors file: it does not begin with a safetensors "
             "header (an 8-byte little-endian length, then a JSON object).")


class _File:
    """A regular file opened for positional reads (no mmap: nothing can SIGBUS)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            st = os.stat(self.path)
        except (OSError, ValueError) as e:
            _fail(f"cannot open {self.path!r}: {getattr(e, 'strerror', None) or e}.", "E_IO")
        self._refuse_special(st)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_BINARY", 0)
        try:
            self.fd = os.open(self.path, flags)
        except OSError as e:
            _fail(f"cannot open {self.path!r}: {e.strerror}.", "E_IO")
        try:
            st = os.fstat(self.fd)
            self._refuse_special(st)  # swapped between stat() and open()
        except BaseException:
            os.close(self.fd)
            raise
        self.size = st.st_size
        self._lock = None if hasattr(os, "preadv") else threading.Lock()

    def _refuse_special(self, st):
        if stat.S_ISREG(st.st_mode):
            return
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a named pipe (FIFO)"
                if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "not a regular file")
        _fail(f"{self.path!r} is {kind}; an optstate archive is a regular file. Name the "
              "file itself (reading a pipe or device could block or never end).", "E_NOT_FILE")

    def close(self):
        os.close(self.fd)

    def read_into(self, buf, offset, with_crc=False, what="the file"):
        """Fill ``buf`` (a writable byte memoryview) from ``offset``; return its crc32."""
        n, pos, crc = len(buf), 0, 0
        while pos < n:
            part = buf[pos:pos + _READ_CHUNK]
            try:
                if self._lock is None:
                    got = os.preadv(self.fd, [part], offset + pos)
                else:  # pragma: no cover - platforms without preadv
                    with self._lock:
                        os.lseek(self.fd, offset + pos, os.SEEK_SET)
                        got = os.readv(self.fd, [part])
            except OSError as e:
                _fail(f"cannot read {self.path!r} at byte {offset + pos}: {e.strerror}.",
                      "E_IO")
            if got <= 0:
                _fail(f"{self.path!r} ended at byte {offset + pos} while reading {what}, which "
                      f"runs to byte {offset + n}: the file was truncated (perhaps while it "
                      "was being read). Read it again once it is complete.", "E_TRUNCATED")
            if with_crc:
                crc = crc32(part[:got], crc)
            pos += got
        return crc

    def read(self, offset, n, what):
        buf = bytearray(n)
        self.read_into(memoryview(buf), offset, what=what)
        return buf


# --- the container header: a strict parser that builds only the tensor table -------------
# JSON's grammar for the parts safetensors uses. A generic parser would first build the
# whole document (a 100 MiB header of "{}" or "[]" is several GB of objects); this one
# stores each entry as a small tuple as it goes and stops at the first thing out of form.
_W = r"[ \t\n\r]*"
_STR = r'"([^"\\\x00-\x1f]*+(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*+)*+)"'
_UINT = r"(?:0|[1-9][0-9]{0,19})"
_NUM = r"-?[0-9]++(?:\.[0-9]++)?+(?:[eE][-+]?[0-9]++)?+"
_KEY_RE = re.compile(_W + _STR + _W + ":" + _W)
_STR_RE = re.compile(_STR)
_SEP_RE = re.compile(_W + "([,}])")
_END_RE = re.compile(_W + r"\Z")
_NUMS_RE = re.compile(r"\[" + _W + "((?:" + _NUM + ")(?:" + _W + "," + _W + _NUM + ")*+)?+"
                      + _W + r"\]")
_UINT_RE = re.compile(_UINT)
# One entry in the usual form (any member order), matched at once.
_MEMBER = ('"(dtype|shape|data_offsets)"' + _W + ":" + _W + r'(?:"([A-Za-z0-9_]{1,32})"|\['
           + _W + "(" + _UINT + "(?:" + _W + "," + _W + _UINT + "){0,63})?" + _W + r"\])")
_ENTRY_RE = re.compile(_W + _STR + _W + ":" + _W + r"\{" + _W + _MEMBER + _W + "," + _W
                       + _MEMBER + _W + "," + _W + _MEMBER + _W + r"\}" + _W + "([,}])")
_MEMBERS = frozenset(("dtype", "shape", "data_offsets"))
# The two orders writers use, as one match with named groups: sorted keys (this writer, and
# any json.dumps(sort_keys=True)) and declaration order (safetensors' own writers).
_F_KEY = _W + _STR.replace("(", "(?P<k>", 1) + _W + ":" + _W + r"\{" + _W
_F_OFFS = ('"data_offsets"' + _W + ":" + _W + r"\[" + _W + "(?P<b>" + _UINT + ")" + _W + ","
           + _W + "(?P<e>" + _UINT + ")" + _W + r"\]")
_F_TYPE = '"dtype"' + _W + ":" + _W + '"(?P<t>[A-Za-z0-9_]{1,32})"'
_F_SHAPE = ('"shape"' + _W + ":" + _W + r"\[" + _W + "(?P<s>" + _UINT + "(?:" + _W + "," + _W
            + _UINT + "){0,63})?" + _W + r"\]")
_F_END = _W + r"\}" + _W + "(?P<p>[,}])"
_C = _W + "," + _W
_FAST_RES = (re.compile(_F_KEY + _F_OFFS + _C + _F_TYPE + _C + _F_SHAPE + _F_END),
             re.compile(_F_KEY + _F_TYPE + _C + _F_SHAPE + _C + _F_OFFS + _F_END))


def _unescape(s):
    return json.loads(f'"{s}"') if "\\" in s else s


def _ints(text):
    return tuple(map(int, text.split(","))) if text else ()


def _entry_from_match(m, key):
    g = m.groups()
    members = {}
    for i in (1, 4, 7):
        name, sval, arr = g[i], g[i + 1], g[i + 2]
        if name in members:
            _fail(f"tensor entry repeats the member {name!r}.", "E_CONTAINER", key=key)
        if name == "dtype":
            if sval is None:
                _fail("tensor dtype must be a string.", "E_CONTAINER", key=key)
            members[name] = sval
        elif sval is not None:
            return None  # a string where numbers belong: the careful path says what is wrong
        else:
            members[name] = _ints(arr)
    offs = members["data_offsets"]
    if len(offs) != 2:
        _fail("data_offsets must be two non-negative integers.", "E_OFFSETS", key=key)
    return members["dtype"], members["shape"], offs[0], offs[1]


def _parse_numbers(text, pos, key, name):
    code = "E_OFFSETS" if name == "data_offsets" else "E_CONTAINER"
    want = ("two non-negative integers" if name == "data_offsets" else
            "an array of non-negative integers")
    m = _NUMS_RE.match(text, pos)
    if not m:
        _fail(f"tensor {name} must be {want}.", code, key=key)
    body = m.group(1) or ""
    count = body.count(",") + 1 if body else 0
    if name == "data_offsets" and count != 2:
        _fail(f"data_offsets must be two non-negative integers; got {count}.", code, key=key)
    if name == "shape" and count > _header.MAX_RANK:
        return count, m.end()  # refused (E_LIMIT) once format and version are known
    items = [x.strip(" \t\n\r") for x in body.split(",")] if body else []
    if not all(_UINT_RE.fullmatch(x) for x in items):
        _fail(f"tensor {name} must be {want}; got [{body[:60]}].", code, key=key)
    return tuple(int(x) for x in items), m.end()


def _parse_entry(text, pos, key):
    """One tensor entry at ``pos`` (after its key), member by member; return (entry, pos)."""
    if not text.startswith("{", pos):
        _fail("tensor entry must be an object with exactly dtype, shape and data_offsets.",
              "E_CONTAINER", key=key)
    pos += 1
    members = {}
    if _SEP_RE.match(text, pos) and _SEP_RE.match(text, pos).group(1) == "}":
        pos = _SEP_RE.match(text, pos).end()
    else:
        while True:
            k = _KEY_RE.match(text, pos)
            if not k:
                _fail(f"expected a member name at byte {8 + pos} of the container header.",
                      "E_CONTAINER", key=key)
            name, pos = _unescape(k.group(1)), k.end()
            if name not in _MEMBERS:
                _fail(f"tensor entry has the member {name[:40]!r}; it must have exactly "
                      "dtype, shape and data_offsets.", "E_CONTAINER", key=key)
            if name in members:
                _fail(f"tensor entry repeats the member {name!r}.", "E_CONTAINER", key=key)
            if name == "dtype":
                s = _STR_RE.match(text, pos)
                if not s:
                    _fail("tensor dtype must be a string.", "E_CONTAINER", key=key)
                members[name], pos = _unescape(s.group(1)), s.end()
            else:
                members[name], pos = _parse_numbers(text, pos, key, name)
            sep = _SEP_RE.match(text, pos)
            if not sep:
                _fail(f"expected ',' or '}}' at byte {8 + pos} of the container header.",
                      "E_CONTAINER", key=key)
            pos = sep.end()
            if sep.group(1) == "}":
                break
    if set(members) != _MEMBERS:
        _fail("tensor entry must have exactly dtype, shape and data_offsets; it lacks "
              f"{sorted(_MEMBERS - set(members))}.", "E_CONTAINER", key=key)
    offs = members["data_offsets"]
    return (members["dtype"], members["shape"], offs[0], offs[1]), pos


def _parse_metadata(text, pos):
    bad = "__metadata__ must map strings to strings."
    if not text.startswith("{", pos):
        _fail(bad, "E_CONTAINER")
    pos += 1
    meta = {}
    sep = _SEP_RE.match(text, pos)
    if sep and sep.group(1) == "}":
        return meta, sep.end()
    while True:
        k = _KEY_RE.match(text, pos)
        if not k:
            _fail(bad, "E_CONTAINER")
        s = _STR_RE.match(text, k.end())
        if not s:
            _fail(bad, "E_CONTAINER")
        name = _unescape(k.group(1))
        if name in meta:
            _fail(f"__metadata__ repeats the key {name[:60]!r}.", "E_CONTAINER")
        meta[name] = _unescape(s.group(1))
        if len(meta) > MAX_METADATA_ENTRIES:
            _fail(f"__metadata__ holds more than {MAX_METADATA_ENTRIES} entries.", "E_LIMIT")
        sep = _SEP_RE.match(text, s.end())
        if not sep:
            _fail(bad, "E_CONTAINER")
        pos = sep.end()
        if sep.group(1) == "}":
            return meta, pos


def _parse_table(raw: bytes):
    """The container header as (metadata or None, {key: (dtype code, shape, begin, end)})."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        _fail(f"container header is not UTF-8 (byte {8 + e.start}).", "E_CONTAINER")
    if not text.startswith("{"):
        _fail(_NOT_OURS, "E_CONTAINER")
    entries, meta = {}, None
    pos = 1
    sep = _SEP_RE.match(text, pos)
    if sep and sep.group(1) == "}":
        pos = sep.end()
    else:
        fast_sorted, fast_declared = (r.match for r in _FAST_RES)
        # One object per dtype code and per shape text: a million tensors of a few shapes
        # then hold a few shape tuples, not a million.
        codes, shapes = {c: c for c in _dtypes.CODE_TO_NAME}, {}
        while True:
            m = fast_sorted(text, pos) or fast_declared(text, pos)
            if m:
                key, b, e, t, sh, last = m.group("k", "b", "e", "t", "s", "p")
                if "\\" in key:
                    key = _unescape(key)
                if key != "__metadata__":
                    if key in entries:
                        _fail(f"the container header names the tensor {key!r} twice; a JSON "
                              "key MUST NOT appear twice (spec 3.2).", "E_DUPLICATE_KEY",
                              key=key)
                    shape = shapes.get(sh)
                    if shape is None:
                        shape = tuple(map(int, sh.split(","))) if sh else ()
                        if len(shapes) < 4096:
                            shapes[sh] = shape
                    entries[key] = (codes.get(t, t), shape, int(b), int(e))
                    if len(entries) > MAX_TENSORS:
                        _fail(f"more than {MAX_TENSORS} tensors; the limit is {MAX_TENSORS}.",
                              "E_LIMIT")
                    pos = m.end()
                    if last == "}":
                        break
                    continue
            m = _ENTRY_RE.match(text, pos)
            entry = None
            if m:
                key = _unescape(m.group(1))
                if key != "__metadata__":
                    entry = _entry_from_match(m, key)
            if entry is not None:
                pos, last = m.end(), m.group(11)
            else:
                k = _KEY_RE.match(text, pos)
                if not k:
                    _fail(f"expected a tensor key (a JSON string) at byte {8 + pos} of the "
                          "container header.", "E_CONTAINER")
                key, pos = _unescape(k.group(1)), k.end()
                if key == "__metadata__":
                    if meta is not None:
                        _fail("container header repeats the key '__metadata__'.",
                              "E_CONTAINER")
                    meta, pos = _parse_metadata(text, pos)
                else:
                    entry, pos = _parse_entry(text, pos, key)
                sep = _SEP_RE.match(text, pos)
                if not sep:
                    _fail(f"expected ',' or '}}' at byte {8 + pos} of the container header.",
                          "E_CONTAINER")
                pos, last = sep.end(), sep.group(1)
            if entry is not None:
                if key in entries:
                    _fail(f"the container header names the tensor {key!r} twice; a JSON key "
                          "MUST NOT appear twice (spec 3.2).", "E_DUPLICATE_KEY", key=key)
                entries[key] = entry
                if len(entries) > MAX_TENSORS:
                    _fail(f"more than {MAX_TENSORS} tensors; the limit is {MAX_TENSORS}.",
                          "E_LIMIT")
            if last == "}":
                break
    if not _END_RE.match(text, pos):
        _fail(f"the container header has bytes after its JSON object (byte {8 + pos}); only "
              "JSON whitespace may follow it (spec 3.2).", "E_CONTAINER")
    return meta, entries


def _check_identity(meta):
    """Format, then version (spec 3.5): what every later check depends on."""
    meta = meta or {}
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
    return version


def _check_empty_tensors(empty, total):
    """At most MAX_EMPTY_TENSORS zero-byte tensors plus one per tensor that holds data."""
    if empty > MAX_EMPTY_TENSORS + (total - empty):
        _fail(f"{empty} of the {total} tensors hold no data; at most "
              f"{MAX_EMPTY_TENSORS} plus one per tensor that holds data are allowed.", "E_LIMIT")


def _check_table(entries, data_len):
    """Dtypes, shapes, offsets and tiling of the container's tensors (spec 3.2, 6, 9.3).

    Returns ``entries`` itself, each value now (dtype name, shape, begin, end): a table of a
    million tensors is not held twice."""
    empty = 0
    names, sizes = _dtypes.CODE_TO_NAME, {n: v[2] for n, v in _dtypes.DTYPES.items()}
    max_rank, max_elements = _header.MAX_RANK, _header.MAX_ELEMENTS
    for key, (code, shape, start, end) in entries.items():
        name = names.get(code) or _dtypes.from_code(code, key=key)
        if type(shape) is int:
            _fail(f"tensor shape has rank {shape}; the limit is {max_rank}.", "E_LIMIT",
                  key=key)
        count = math.prod(shape)
        if len(shape) > max_rank or count > max_elements or (count == 0 and shape and (
                math.prod(d for d in shape if d) > max_elements)):
            _fail(f"tensor shape: {_header.shape_problem(shape)[1]}.", "E_LIMIT", key=key)
        nbytes = count * sizes[name]
        if end < start or end - start != nbytes:
            _fail(f"data_offsets [{start}, {end}] span {end - start} bytes but dtype {code} and "
                  f"shape {list(shape)} need {nbytes}.", "E_OFFSETS", key=key)
        if end > data_len:
            _fail(f"data_offsets end at {end}, past the {data_len}-byte data buffer: "
                  "the file is truncated.", "E_TRUNCATED", key=key)
        entries[key] = (name, shape, start, end)
        empty += count == 0 and key != HEADER_KEY
    _check_empty_tensors(empty, len(entries) - (HEADER_KEY in entries))
    pos = 0
    for key in sorted(entries, key=lambda k: entries[k][2:]):
        start, end = entries[key][2:]
        if start != pos:
            kind = "overlaps the previous tensor" if start < pos else "leaves a gap"
            _fail(f"tensor starts at byte {start} but the previous one ends at {pos}: it "
                  f"{kind}. Tensors must tile the data buffer exactly.", "E_OFFSETS",
                  key=key)
        pos = end
    if pos != data_len:
        _fail(f"tensors cover {pos} bytes but the data buffer has {data_len}: "
              "trailing bytes or truncation.", "E_OFFSETS")
    return entries


_HUGE = 2 * 1024 * 1024
_FLOAT_NAMES = frozenset(("float16", "float32", "float64"))


def _new_array(shape, dtype, nbytes):
    """An uninitialised array of its own. From 2 MiB, its memory starts on a 2 MiB boundary:
    numpy asks the kernel for huge pages there, and filling a fresh array then costs far fewer
    page faults (measured: 200 MB filled 2.5x faster). The spare bytes are never touched, so
    they cost address space, not memory."""
    if nbytes < _HUGE:
        return np.empty(shape, dtype)
    raw = np.empty(nbytes + _HUGE, np.uint8)
    skip = -raw.ctypes.data % _HUGE
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


class _Container:
    """An opened file whose container header and header document are validated."""

    def __init__(self, path):
        self.finite = set()  # keys of large float tensors proven free of NaN/Inf while read
        f = self.file = _File(path)
        try:
            self._load()
        except BaseException:
            f.close()
            raise

    def _load(self):
        f = self.file
        size = f.size
        if size < 8:
            _fail(f"file is {size} bytes; an optstate file starts with an 8-byte header "
                  "length. The file is truncated or not an optstate file.", "E_TRUNCATED")
        (n,) = struct.unpack("<Q", f.read(0, 8, "the header length"))
        if n > MAX_JSON_HEADER or 8 + n > size:
            first = f.read(8, 1, "the container header") if size > 8 else b""
            if first != b"{":
                _fail(_NOT_OURS, "E_HEADER_BOUNDS")
            if n > MAX_JSON_HEADER:
                _fail(f"container header declares {n} bytes; the limit is {MAX_JSON_HEADER}.",
                      "E_HEADER_BOUNDS")
            _fail(f"container header declares {n} bytes but the file has only {size - 8} "
                  "after the length field: truncated, or not an optstate file.",
                  "E_HEADER_BOUNDS")
        meta, entries = _parse_table(bytes(f.read(8, n, "the container header")))
        self.metadata = meta or {}
        self.version = _check_identity(meta)
        self.data_start = 8 + n
        self.data_len = size - 8 - n
        self.tensors = _check_table(entries, self.data_len)
        del entries
        self.doc = self._read_doc()
        _header.validate(self.doc, self.tensors, self.version)

    def _read_doc(self):
        meta = self.metadata
        if meta.get(META_HEADER) != HEADER_KEY or HEADER_KEY not in self.tensors:
            _fail(f"the header tensor {HEADER_KEY!r} is missing.", "E_NOT_OPTSTATE")
        name, shape, start, end = self.tensors[HEADER_KEY]
        if name != "uint8" or len(shape) != 1:
            _fail("the header tensor must be a 1-D U8 tensor.", "E_CONTAINER", key=HEADER_KEY)
        if end - start > _header.MAX_DOC_BYTES:
            _fail(f"header document is {end - start} bytes; the limit is "
                  f"{_header.MAX_DOC_BYTES}.", "E_LIMIT")
        crc = meta.get(META_HEADER_CRC)
        if not isinstance(crc, str) or not re.fullmatch(r"[0-9a-f]{8}", crc):
            _fail(f"metadata {META_HEADER_CRC!r} is {str(crc)[:20]!r}; it must be 8 lowercase "
                  "hex digits (spec 3.3).", "E_CONTAINER")
        buf = bytearray(end - start)
        got = self.file.read_into(memoryview(buf), self.data_start + start, with_crc=True,
                                  what="the header document")
        if f"{got:08x}" != crc:
            raise IntegrityError("the header document does not match its checksum: the file is "
                                 "damaged. Restore it from a copy.", code="E_HEADER_CHECKSUM",
                                 key=HEADER_KEY)
        return _header.decode(buf)

    def _finish(self, key, name, arr, verify, crc=None):
        """Checksum (unless given) and BOOL-check a tensor's private array."""
        if verify and arr.size:
            if crc is None:
                crc = crc32(memoryview(arr.reshape(-1).view(np.uint8)))
            if crc != self.doc["checksums"][key]:
                raise IntegrityError(f"tensor {key!r} does not match its crc32: its bytes are "
                                     "damaged. Restore the file from a copy.",
                                     code="E_CHECKSUM", key=key)
        if name == "bool":
            if arr.size and int(arr.max()) > 1:
                _fail(f"BOOL tensor {key!r} holds the byte {int(arr.max())}; a BOOL is one byte, "
                      "0 or 1 (spec 6).", "E_BOOL_VALUE", key=key)
            arr = arr.view(np.bool_)
        return arr

    @staticmethod
    def _dtype(name):
        return np.dtype(np.uint8) if name == "bool" else _dtypes.storage_dtype(name)

    def read_tensor(self, key, verify):
        """The tensor as a new array (its own buffer), read and checksummed in one pass."""
        name, shape, start, end = self.tensors[key]
        arr = _new_array(shape, self._dtype(name), end - start)
        crc = None
        if end > start:
            raw = memoryview(arr.reshape(-1).view(np.uint8))
            crc = self.file.read_into(raw, self.data_start + start, with_crc=verify,
                                      what=f"tensor {key!r}")
        arr = self._finish(key, name, arr, verify, crc)
        if name in _FLOAT_NAMES and _dtypes.proven_finite(arr):
            self.finite.add(key)  # while its bytes are in cache (count_nonfinite's pass)
        return [(key, arr)]

    def read_run(self, keys, begin, end, verify):
        """Small tensors that lie back to back: one read into private memory, each tensor's
        crc32 over its bytes there, then each copied into its own array (thousands of scalars
        cost one system call, not thousands)."""
        scratch = bytearray(end - begin)
        if scratch:
            self.file.read_into(memoryview(scratch), self.data_start + begin,
                                what=f"tensor {keys[0]!r} and the {len(keys) - 1} after it")
        view, sums, out, types = memoryview(scratch), self.doc["checksums"], [], {}
        for key in keys:
            name, shape, start, stop = self.tensors[key]
            dt = types.get(name) or types.setdefault(name, self._dtype(name))
            if stop > start:
                if verify and crc32(view[start - begin:stop - begin]) != sums[key]:
                    raise IntegrityError(f"tensor {key!r} does not match its crc32: its bytes "
                                         "are damaged. Restore the file from a copy.",
                                         code="E_CHECKSUM", key=key)
                arr = np.frombuffer(scratch, dt, (stop - start) // dt.itemsize,
                                    start - begin).reshape(shape).copy()
            else:
                arr = np.empty(shape, dt)
            out.append((key, self._finish(key, name, arr, False) if name == "bool" else arr))
        return out

    def read_all(self, verify, progress=None, parallel=True, keys=None):
        """Every tensor (or those of ``keys``), verified; in threads from
        _PARALLEL_VERIFY_BYTES unless ``parallel`` is False (a caller that runs several of
        these side by side)."""
        keys = sorted((k for k in (self.tensors if keys is None else keys)
                       if k != HEADER_KEY), key=lambda k: self.tensors[k][2])
        jobs, run, run_begin, run_end = [], [], 0, 0
        for key in keys:
            _, _, start, end = self.tensors[key]
            if end - start > _SMALL_TENSOR:
                if run:
                    jobs.append((self.read_run, run, run_begin, run_end))
                    run = []
                jobs.append((self.read_tensor, key))
                continue
            if run and (start != run_end or end - run_begin > _READ_CHUNK):
                jobs.append((self.read_run, run, run_begin, run_end))
                run = []
            if not run:
                run_begin = start
            run.append(key)
            run_end = end
        if run:
            jobs.append((self.read_run, run, run_begin, run_end))
        def work(job):
            part = job[0](*job[1:], verify)
            if progress is not None:
                progress(sum(self.tensors[k][3] - self.tensors[k][2] for k, _ in part))
            return part
        size = sum(self.tensors[k][3] - self.tensors[k][2] for k in keys)
        parts = run_jobs(work, jobs, parallel and verify and size >= _PARALLEL_VERIFY_BYTES)
        return {key: arr for part in parts for key, arr in part}


def run_jobs(fn, items, parallel):
    """``[fn(x) for x in items]``, in threads when ``parallel`` (preadv and crc32 release the
    GIL). The first failure in item order is raised, as one thread would; items not started
    by then are cancelled, so an error or an interrupt does not wait for the whole read."""
    cpus = os.cpu_count() or 1
    if not parallel or cpus < 2 or len(items) < 2:
        return [fn(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=min(4, cpus))
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _guarded(fn, *args):
    """Run a reader step; anything but our own errors becomes a FormatError (E_FORMAT)."""
    try:
        return fn(*args)
    except OptStateError:
        raise
    except MemoryError:
        raise FormatError("the file's tensors need more memory than this process could "
                          "allocate.", code="E_LIMIT") from None
    except Exception as e:
        raise FormatError(f"unexpected {type(e).__name__} while reading ({str(e)[:120]}); "
                          "this is a reader bug: please report it with the file.",
                          code="E_FORMAT") from e


def _open(path):
    """The validated container at ``path``; a folder is a sharded archive (spec 14)."""
    from . import _archive
    return _archive.Archive(path) if _archive.is_archive(path) else _Container(path)


def _read(path, verify, progress=None, with_dtypes=False):
    cont = _open(path)
    try:
        arrays = cont.read_all(verify, progress)
    finally:
        cont.file.close()
    state = _state_of(cont.doc, cont.version, arrays)
    # ids of the arrays proven free of NaN/Inf while read: the import's NaN/Inf notes and
    # check's warnings skip a second pass over them (the state holds them: ids stay unique)
    state._proven_finite = frozenset(id(arrays[k]) for k in getattr(cont, "finite", ()))
    if with_dtypes:
        return state, {key: entry[0] for key, entry in cont.tensors.items()}
    return state


def _state_of(doc, version, arrays):
    """The :class:`OptimizerState` of a validated header document; ``arrays`` maps its
    tensor keys to what the state holds (arrays, or :class:`Stored` not read yet)."""
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
            slots={k: arrays[v] for k, v in w["slots"].items()},
            value=arrays[w["value"]] if w.get("value") is not None else None))
    state = OptimizerState(
        optimizer=info, step=doc["step"], weights=weights,
        globals={k: arrays[v] for k, v in doc["globals"].items()},
        producer=doc["producer"], metadata=doc.get("metadata", {}),
        version=f"{version[0]}.{version[1]}")
    return state


class Stored(LazyTensor):
    """A tensor of an opened file, described by its validated header and not read yet
    (:class:`Lazy`). ``np.asarray`` reads it whole, verified; an import that knows which
    regions a process needs reads only those (:meth:`Lazy.read`). ``note``: what the
    import's NaN/Inf note calls it, counted once it is read."""

    __slots__ = ("key", "note")

    def __init__(self, key, shape, dtype, fetch):
        super().__init__(shape, dtype, fetch)
        self.key, self.note = key, None


class Lazy:
    """A file or archive opened for an import that reads only what it assigns (spec 14.11):
    the container header, the index and every shard's header are validated on opening, as
    :func:`read` does; :meth:`state` describes the tensors as :class:`Stored`, and
    :meth:`read` reads the tensors, or the regions of tensors, a plan asks for. ``ident``
    names the export that was opened (two processes that opened different exports must not
    combine them)."""

    def __init__(self, path):
        self.cont = _guarded(_open, path)
        self.whole = {}   # key -> array, read whole on demand (a conversion, a resize)
        self.bytes_read = 0
        cont = self.cont
        if hasattr(cont, "generation"):
            self.ident = f"archive {cont.generation}"
        else:
            self.ident = f"file {cont.metadata.get(META_HEADER_CRC)} {cont.file.size}"

    def close(self):
        self.cont.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _entry(self, key):
        name, shape = self.cont.tensors[key][:2]
        return name, tuple(int(d) for d in shape)

    def state(self) -> OptimizerState:
        keys = {k for k in self.cont.tensors if k != HEADER_KEY}
        stored = {}
        for key in keys:
            name, shape = self._entry(key)
            stored[key] = Stored(key, shape, name, lambda key=key: self._fetch(key))
        return _state_of(self.cont.doc, self.cont.version, stored)

    def _fetch(self, key):
        if key not in self.whole:
            self.whole[key] = self.read({key: None})[key]
        return self.whole[key]

    def read(self, wanted, *, verify=True):
        """{key: array} for ``wanted`` {key: None}: whole tensors; {key: Regions} for
        {key: [(start, stop), ...]}: the regions only. Of an archive, only the stored
        pieces (or whole tensors) a region touches are read, each whole and verified (a
        crc32 covers a stored piece, not a part of it)."""
        done = {k: self.whole[k] for k, boxes in wanted.items()
                if boxes is None and k in self.whole}  # read whole while planning
        rest = {k: boxes for k, boxes in wanted.items() if k not in done}
        return {**done, **(_guarded(self._read, rest, verify) if rest else {})}

    def _read(self, wanted, verify):
        cont = self.cont
        if hasattr(cont, "read_regions"):
            out, self.bytes_read = cont.read_regions(wanted, verify, self.bytes_read)
            return out
        arrays = cont.read_all(verify, keys=list(wanted))
        self.bytes_read += sum(cont.tensors[k][3] - cont.tensors[k][2] for k in wanted)
        out = {}
        for key, boxes in wanted.items():
            arr = arrays[key]
            out[key] = arr if boxes is None else Regions.cut(arr, cont.tensors[key][0], boxes)
        return out


def read(path, *, verify: bool = True, progress=None) -> OptimizerState:
    """Read an optstate file; return an :class:`OptimizerState` of private arrays.

    Every array is a new, writable numpy array with its own memory: the file is not
    mapped, nothing is shared with it, and writing an array changes nothing on disk.
    The container header and the header document are validated completely before any
    tensor is read; then each tensor is read once, and with ``verify=True`` (the
    default) its crc32 is computed over the very bytes returned. So the values
    returned are the values checked, even if another process rewrites the file
    meanwhile; a file truncated while it is read raises :class:`FormatError`
    (``E_TRUNCATED``), never a crash (spec 9.2). ``verify=False`` skips only the
    checksums. Damage raises :class:`IntegrityError` naming the tensor, any
    malformation :class:`FormatError`; nothing else escapes for a bad file.
    ``progress``, when given, is called with the byte count of each piece read (the
    command line draws its progress bar with it).

    >>> read("missing.optstate")
    Traceback (most recent call last):
    ...
    optstate_format._errors.FormatError: E_IO: cannot open 'missing.optstate': No such file or directory.
    """
    return _guarded(_read, path, verify, progress)


def read_with_dtypes(path, *, verify: bool = True, progress=None):
    """:func:`read`, and the dtype name the container gives each tensor key (the summary of
    spec 13.1 takes dtypes from the container: a bfloat16 tensor read as raw 16-bit words
    where no bfloat16 type is installed is still a bfloat16)."""
    return _guarded(_read, path, verify, progress, True)


def _read_doc_only(path):
    cont = _open(path)
    cont.file.close()
    return cont.doc


def read_header(path) -> dict:
    """The decoded header document of ``path`` (validated; tensors not read)."""
    return _guarded(_read_doc_only, path)
