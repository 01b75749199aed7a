"""Sharded archives (spec section 14): one state as a folder of safetensors files.

Layout of an archive folder::

    optstate-index.safetensors                      the index: the header document, once
    shard-<gen>-00001-of-00003.safetensors          shards: the tensors, each file a valid
    shard-<gen>-00002-of-00003.safetensors          safetensors file with its own small
    shard-<gen>-00003-of-00003.safetensors          document of crc32s

The index is a container of section 3 whose ``optstate.format`` is ``optstate-archive`` and
whose only tensor is the header document: the document of section 4, unchanged, plus the
field ``archive`` (which shard holds which tensor; each shard's size and document crc32). A
shard is a container whose ``optstate.format`` is ``optstate-shard``: its tensors, then a
small document (``archive`` generation, ``checksums``). ``<gen>`` is a random token chosen
per export, so a new export never overwrites a file the current index names.

Commit: shards are written under temporary names, fsynced and renamed to their final names
(not yet named by any index); then the new index is renamed over the old one (the commit
point); then the shards of the replaced index are removed. A new archive is built in a
temporary folder beside ``path`` and the folder is renamed to ``path``. An interrupted export
leaves the previous archive readable and no half archive under the name.

Reading validates the index, then every shard's container and document, then the index's
header document against the union of the shards' tensor tables, and only then reads tensor
bytes (as the single-file reader: private arrays, positional reads, crc32 over the bytes
returned, no mmap). Shards are opened by plain file name relative to the archive folder,
never following a symbolic link.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np

from . import _dtypes, _header, _io
from ._errors import FormatError, IntegrityError, OptStateError, StorageError, UnsupportedError
from ._paths import HEADER_KEY
from ._state import LazyTensor, Regions
from ._versions import CURRENT_VERSION, parse_version

INDEX_NAME = "optstate-index.safetensors"
ARCHIVE_FORMAT = "optstate-archive"
SHARD_FORMAT = "optstate-shard"
# Reader limit (spec 14.6): shards named by one index.
MAX_SHARDS = 100_000
# A shard file name: a plain name in the archive folder (no separator, no leading dot).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_GEN = re.compile(r"[0-9a-f]{16}")
_SHARD_FILE = re.compile(
    r"shard-([0-9a-f]{16})(?:-p[0-9]{5,})?-[0-9]{5,}-of-[0-9]{5,}\.safetensors")
# Reader limit (spec 14.9): pieces of one tensor.
MAX_PIECES = 4096
_TEMP_FILE = re.compile(r"\..+\.([0-9a-f]{8})-([0-9]{1,10})\.[A-Za-z0-9_]+\.optstate\.tmp")


def _fail(msg, code, **kw):
    raise FormatError(msg, code=code, **kw)


def _gf2_times(mat, vec):
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat):
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The crc32 of A + B from crc32(A), crc32(B) and len(B) (zlib's method: appending
    ``len2`` zero bytes is a linear map, applied by repeated squaring).

    >>> import zlib
    >>> crc32_combine(zlib.crc32(b"ab"), zlib.crc32(b"cde"), 3) == zlib.crc32(b"abcde")
    True
    """
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def piece_key(key: str, start, stop) -> str:
    """The key in its shard of the piece ``[start, stop)`` of tensor ``key`` (spec 14.9).

    >>> piece_key("slot:d/kernel:m", [0, 8], [4, 16])
    'slot:d/kernel:m@0:4,8:16'
    """
    return f"{key}@" + ",".join(f"{a}:{b}" for a, b in zip(start, stop))


def shard_name(gen: str, i: int, n: int) -> str:
    """The file name of shard ``i`` (1-based) of ``n`` of generation ``gen``.

    >>> shard_name("0123456789abcdef", 1, 3)
    'shard-0123456789abcdef-00001-of-00003.safetensors'
    """
    return f"shard-{gen}-{i:05d}-of-{n:05d}.safetensors"


# ----------------------------------------------------------------------------- writing

def _groups(tensors, max_shard_size):
    """Split the planned tensors (in plan order) into shards of at most ``max_shard_size``
    data bytes; a tensor larger than that gets a shard of its own."""
    groups, cur, size = [], [], 0
    for t in tensors:
        nbytes = math.prod(t[2]) * _dtypes.itemsize(t[1])
        if cur and size + nbytes > max_shard_size:
            groups.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += nbytes
    if cur:
        groups.append(cur)
    return groups


def _header_json(entries, meta, doc_len):
    """The container header of ``entries`` followed by the document of ``doc_len`` bytes."""
    data_len = entries[-1][4] if entries else 0
    return _io._container_header(
        entries + [(HEADER_KEY, "uint8", (doc_len,), data_len, data_len + doc_len)], meta)


def _reserved(entries, fmt):
    """Room for the container header, sized with placeholder maxima and aligned so that the
    data buffer starts at a multiple of 64 (spec 9.1)."""
    size = len(_header_json(entries, _meta(fmt, None), 10 ** 15))
    return size + (-(8 + size)) % _io._ALIGN


def _meta(fmt, blob):
    return {_io.META_FORMAT: fmt, _io.META_VERSION: f"{CURRENT_VERSION[0]}.{CURRENT_VERSION[1]}",
            _io.META_HEADER: HEADER_KEY,
            _io.META_HEADER_CRC: "ffffffff" if blob is None else f"{_io.crc32(blob):08x}"}


def _write_temp(folder: Path, final: str, mode: int, fsync: bool, fill):
    """Write a file beside ``folder/final`` under a temporary name; ``fill(f)`` writes it.
    Returns the temporary path (the caller renames it)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{_io._temp_prefix(final)}{_io._HOST}-{os.getpid()}.",
                               suffix=".optstate.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            fill(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return tmp


def _fill_shard(group, gen, pieces=None):
    """A function writing one shard: its tensors (data first, the container header last,
    as the single-file writer does), then its document; records crc32s and the doc crc."""
    record = {}

    def fill(f):
        entries, offset = [], 0
        for key, dtype, shape, _ in group:
            nbytes = math.prod(shape) * _dtypes.itemsize(dtype)
            entries.append((key, dtype, shape, offset, offset + nbytes))
            offset += nbytes
        reserved = _reserved(entries, SHARD_FORMAT)
        f.seek(8 + reserved)
        checksums = {}
        for key, dtype, shape, source in group:
            arr = np.asarray(source)
            if tuple(arr.shape) != tuple(shape) or _dtypes.name_of(arr.dtype) != dtype:
                raise FormatError(f"tensor source changed while writing: expected {dtype}"
                                  f"{list(shape)}, got {arr.dtype}{list(arr.shape)}.",
                                  code="E_SCHEMA", key=key)
            view = _io._as_bytes_view(arr.astype(_dtypes.storage_dtype(dtype), copy=False))
            checksums[key] = _io.crc32(view)
            f.write(view)
            del arr, view
        doc = {"format": SHARD_FORMAT, "version": f"{CURRENT_VERSION[0]}.{CURRENT_VERSION[1]}",
               "archive": gen, "checksum": "crc32", "checksums": dict(sorted(checksums.items()))}
        if pieces:
            doc["pieces"] = {k: pieces[k] for k in sorted(pieces)}
        blob = msgpack.packb(doc, use_bin_type=True)
        f.write(blob)
        head = _header_json(entries, _meta(SHARD_FORMAT, blob), len(blob))
        f.seek(0)
        f.write(struct.pack("<Q", reserved) + _io._padded(head, reserved))
        record.update(checksums=checksums, header_crc32=f"{_io.crc32(blob):08x}",
                      size=8 + reserved + offset + len(blob))

    return fill, record


def _fill_index(doc):
    blob = msgpack.packb(doc, use_bin_type=True)

    def fill(f):
        head = _header_json([], _meta(ARCHIVE_FORMAT, blob), len(blob))
        size = len(head) + (-(8 + len(head))) % _io._ALIGN
        f.write(struct.pack("<Q", size) + _io._padded(head, size) + blob)

    return fill


def _pid_gone(host, pid):
    return host == _io._HOST and pid != os.getpid() and not _io._pid_alive(pid)


def _old(st):
    return time.time() - st.st_mtime >= _io.STALE_TEMP_SECONDS


def _remove_stale_temp_dirs(parent: Path, name: str):
    """Temporary folders of killed exports of a new archive ``name`` (spec 14.4)."""
    if os.name == "nt":  # pragma: no cover
        return
    prefix = _io._temp_prefix(name)
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for e in entries:
        m = _io._TEMP_TAIL.fullmatch(e.name[len(prefix):]) if e.name.startswith(prefix) else None
        if not m or not _pid_gone(m.group(1), int(m.group(2))):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode) and _old(st):
                shutil.rmtree(e.path)
        except OSError:
            continue


def _clean(folder: Path, keep: set, previous: set):
    """After a commit: remove the shards the replaced index named, shard files of other
    generations and temporary files of killed writers, once old enough (spec 14.4)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        n = e.name
        if n in keep or n == INDEX_NAME:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            if n in previous:
                os.unlink(e.path)
            elif _SHARD_FILE.fullmatch(n) and _old(st):
                os.unlink(e.path)
            else:
                m = _TEMP_FILE.fullmatch(n)
                if m and _pid_gone(m.group(1), int(m.group(2))) and _old(st):
                    os.unlink(e.path)
        except OSError:
            continue


def _previous_shards(folder: Path) -> set:
    """The shard names the current index of ``folder`` names (empty if none or unreadable)."""
    try:
        arch = Archive(folder, shards=False)
        arch.close()
        return set(arch.files)
    except (OptStateError, OSError):
        return set()


def _check_target(path: Path) -> bool:
    """Whether ``path`` is new (True) or an archive folder or empty folder to replace (False);
    StorageError (E_WRITE) for anything else (spec 14.4)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        raise _io._storage_error(e, path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"cannot write the archive {str(path)!r}: a file is at the path; a "
                           "sharded archive is a folder. Remove the file or choose another "
                           "name. Nothing was written.")
    try:
        listing = os.listdir(path)
    except OSError as e:
        raise _io._storage_error(e, path) from None
    if listing and INDEX_NAME not in listing:
        raise StorageError(f"cannot write the archive {str(path)!r}: the folder is not an "
                           f"optstate archive (it has no {INDEX_NAME}) and is not empty. "
                           "Choose another name. Nothing was written.")
    return False


def _new_work(parent: Path, name: str) -> Path:
    """A temporary folder beside a new archive, named as 9.4's temporary files."""
    _remove_stale_temp_dirs(parent, name)
    work = Path(tempfile.mkdtemp(prefix=f"{_io._temp_prefix(name)}{_io._HOST}-{os.getpid()}.",
                                 suffix=".optstate.tmp", dir=parent))
    os.chmod(work, 0o777 & ~_io._umask())
    return work


def write_archive(state, path, *, max_shard_size, fsync=True, _generation=None) -> Path:
    """Write ``state`` as a sharded archive: a folder at ``path`` (spec section 14).

    Each shard holds at most ``max_shard_size`` bytes of tensor data (a larger tensor gets a
    shard of its own). The archive is committed as a whole: a new folder appears under
    ``path`` only complete, an existing archive is replaced by renaming its new index over
    the old one, and a failed or killed export leaves the previous archive readable.
    """
    if type(max_shard_size) is not int or max_shard_size < 1:
        raise UnsupportedError(f"max_shard_size must be a positive int (bytes of tensor data "
                               f"per shard), got {max_shard_size!r}.")
    procs = processes(state) if _generation is None else None
    if procs is not None:
        return write_distributed(state, path, max_shard_size=max_shard_size, fsync=fsync,
                                 procs=procs)
    path = Path(path)
    doc, tensors = _io._plan(state)
    gen = _generation or secrets.token_hex(8)
    groups = _groups(tensors, max_shard_size)
    if len(groups) > MAX_SHARDS:
        raise UnsupportedError(f"{len(groups)} shards exceed the reader limit of {MAX_SHARDS}; "
                               "raise max_shard_size.")
    names = [shard_name(gen, i + 1, len(groups)) for i in range(len(groups))]
    parent = path.parent if str(path.parent) else Path(".")
    fresh = _check_target(path)
    mode = _io._file_mode(path / INDEX_NAME)
    created = []  # files this export put under final names (removed if it fails)
    work = None
    try:
        if fresh:
            work = folder = _new_work(parent, path.name)
        else:
            folder = path
        previous = set() if fresh else _previous_shards(path)
        files, where, checksums = {}, {}, {}
        for name, group in zip(names, groups):
            fill, record = _fill_shard(group, gen)
            tmp = _write_temp(folder, name, mode, fsync, fill)
            os.replace(tmp, folder / name)
            created.append(folder / name)
            files[name] = {"size": record["size"], "header_crc32": record["header_crc32"]}
            checksums.update(record["checksums"])
            for key, *_ in group:
                where[key] = name
        if fsync:
            _io._fsync_dir(folder)
        doc["checksums"] = dict(sorted(checksums.items()))
        doc["archive"] = {"generation": gen, "shards": dict(sorted(where.items())),
                          "files": dict(sorted(files.items()))}
        tmp = _write_temp(folder, INDEX_NAME, mode, fsync, _fill_index(doc))
        os.replace(tmp, folder / INDEX_NAME)  # the commit point of an existing archive
        if fresh:
            if fsync:
                _io._fsync_dir(folder)
            os.rename(work, path)  # the commit point of a new archive
            work = None
            if fsync:
                _io._fsync_dir(parent)
        else:
            created = []
            if fsync:
                _io._fsync_dir(folder)
            _clean(folder, set(names), previous - set(names))
    except BaseException as e:
        for p in created:
            try:
                os.unlink(p)
            except OSError:
                pass
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, OptStateError):
            if fresh and e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise StorageError(f"cannot write the archive {str(path)!r}: another writer "
                                   "created it meanwhile. Nothing was left behind.",
                                   errno=e.errno) from e
            raise _io._storage_error(e, path) from e
        raise
    return path


# ----------------------------------------------------------------------------- reading

class _Member(_io._File):
    """A file of the archive, opened by plain name relative to the archive folder, never
    through a symbolic link (spec 14.5)."""

    def __init__(self, dfd, folder, name, missing):
        self.path = os.path.join(folder, name)
        self._lock = None if hasattr(os, "preadv") else threading.Lock()
        at = {"dir_fd": dfd} if dfd is not None else {}
        target = name if dfd is not None else self.path
        try:
            st = os.stat(target, follow_symlinks=False, **at)
        except FileNotFoundError:
            _fail(missing, "E_ARCHIVE_MISSING")
        except (OSError, ValueError) as e:
            _fail(f"cannot open {self.path!r}: {getattr(e, 'strerror', None) or e}.", "E_IO")
        if stat.S_ISLNK(st.st_mode):
            _fail(f"{self.path!r} is a symbolic link; the files of an archive must be regular "
                  "files in its folder (a link could lead out of it). Replace the link by the "
                  "file.", "E_ARCHIVE_LINK")
        self._refuse_special(st)
        flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        try:
            self.fd = os.open(target, flags, **at)
        except FileNotFoundError:
            _fail(missing, "E_ARCHIVE_MISSING")
        except OSError as e:
            if e.errno == errno.ELOOP:
                _fail(f"{self.path!r} is a symbolic link; the files of an archive must be "
                      "regular files in its folder.", "E_ARCHIVE_LINK")
            _fail(f"cannot open {self.path!r}: {e.strerror}.", "E_IO")
        try:
            st = os.fstat(self.fd)
            self._refuse_special(st)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = st.st_size
        self.ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Part(_io._Container):
    """The index or a shard: a container of section 3 with its own format id (spec 14.2)."""

    def __init__(self, file, fmt):  # noqa: D107 - does not call the base constructor
        self.file = file
        self.finite = set()  # as _Container's: tensors proven free of NaN/Inf while read
        try:
            self._load_as(fmt)
        finally:
            file.close()

    def _load_as(self, fmt):
        f = self.file
        size = f.size
        if size < 8:
            _fail(f"it is {size} bytes; it is truncated.", "E_TRUNCATED")
        (n,) = struct.unpack("<Q", f.read(0, 8, "the header length"))
        if n > _io.MAX_JSON_HEADER or 8 + n > size:
            _fail(f"its container header declares {n} bytes; the file has {size - 8} "
                  f"after the length field (limit {_io.MAX_JSON_HEADER}).", "E_HEADER_BOUNDS")
        meta, entries = _io._parse_table(bytes(f.read(8, n, "the container header")))
        meta = meta or {}
        if meta.get(_io.META_FORMAT) != fmt:
            _fail(f"its metadata {_io.META_FORMAT!r} is "
                  f"{str(meta.get(_io.META_FORMAT))[:40]!r}, expected {fmt!r}.", "E_NOT_OPTSTATE")
        self.metadata = meta
        self.version = _io._check_identity({**meta, _io.META_FORMAT: _io.FORMAT_ID})
        self.data_start = 8 + n
        self.data_len = size - 8 - n
        self.tensors = _io._check_table(entries, self.data_len)
        del entries
        self.doc = self._read_doc()


def _typed(val, types, where):
    if type(val) not in (types if isinstance(types, tuple) else (types,)):
        _fail(f"{where} must be {getattr(types, '__name__', types)}, got "
              f"{type(val).__name__}.", "E_SCHEMA")
    return val


def _check_name(name, where):
    if type(name) is not str or not _SAFE_NAME.fullmatch(name) or name == INDEX_NAME:
        _fail(f"{where} names the shard file {str(name)[:80]!r}: a shard is named by a plain "
              "file name in the archive folder (letters, digits, '.', '_', '-', not starting "
              f"with '.', at most 255 characters, not {INDEX_NAME!r}); a separator, '..' or "
              "an absolute path could reach outside the archive.", "E_ARCHIVE_NAME")


def _archive_field(doc):
    """The index's ``archive`` field, checked in form (spec 14.3); returns
    (generation, {key: file}, {file: (size, header_crc32)})."""
    arch = _typed(doc.get("archive"), dict, "header.archive")
    gen = _typed(arch.get("generation"), str, "archive.generation")
    if not _GEN.fullmatch(gen):
        _fail(f"archive.generation {gen[:40]!r} must be 16 lowercase hex digits.", "E_SCHEMA")
    files = _typed(arch.get("files"), dict, "archive.files")
    if len(files) > MAX_SHARDS:
        _fail(f"the index names {len(files)} shards; the limit is {MAX_SHARDS}.", "E_LIMIT")
    out = {}
    for name, rec in files.items():
        _check_name(name, "archive.files")
        _typed(rec, dict, f"archive.files[{name!r}]")
        size = _typed(rec.get("size"), int, f"archive.files[{name!r}].size")
        crc = _typed(rec.get("header_crc32"), str, f"archive.files[{name!r}].header_crc32")
        if size < 8 or not re.fullmatch(r"[0-9a-f]{8}", crc):
            _fail(f"archive.files[{name!r}] must give a size >= 8 and header_crc32 as 8 "
                  "lowercase hex digits.", "E_SCHEMA")
        out[name] = (size, crc)
    shards = _typed(arch.get("shards"), dict, "archive.shards")
    held = {}
    for key, name in shards.items():
        if type(name) is not str:
            _fail(f"archive.shards[{key!r}] must be a file name.", "E_SCHEMA", key=key)
        _check_name(name, f"archive.shards[{key!r}]")
        if key == HEADER_KEY:
            _fail(f"archive.shards names {HEADER_KEY!r}; the document is in the index.",
                  "E_SCHEMA")
        if name not in out:
            _fail(f"archive.shards puts tensor {key!r} in {name!r}, which archive.files does "
                  "not list.", "E_SCHEMA", key=key)
        held.setdefault(name, []).append(key)
    pieces = _pieces_field(arch, shards, out, held)
    for name in out:
        if name not in held:
            _fail(f"archive.files lists {name!r}, which holds no tensor.", "E_SCHEMA")
    return gen, shards, out, held, pieces


def _pieces_field(arch, shards, files, held):
    """``archive.pieces`` (spec 14.9): {key: (dtype, shape, [(file, shard key, start, stop,
    crc32)])}, checked in form, bounds and tiling before any shard is opened."""
    raw = arch.get("pieces", {})
    _typed(raw, dict, "archive.pieces")
    out, names = {}, set(shards) | set(raw)  # a piece's key is no tensor key (14.9)
    for key, rec in raw.items():
        where = f"archive.pieces[{key!r}]"
        _typed(rec, dict, where)
        if key in shards or key == HEADER_KEY:
            _fail(f"{where}: the tensor is also stored whole (or is the document).", "E_SCHEMA",
                  key=key)
        dtype = _typed(rec.get("dtype"), str, f"{where}.dtype")
        if dtype not in _dtypes.DTYPES:
            _fail(f"{where}.dtype {dtype[:40]!r} is not a dtype of section 6.", "E_DTYPE",
                  key=key)
        shape = _typed(rec.get("shape"), list, f"{where}.shape")
        problem = _header.shape_problem(shape)
        if problem:
            _fail(f"{where}.shape: {problem[1]}.", problem[0], key=key)
        parts = _typed(rec.get("parts"), list, f"{where}.parts")
        if not parts or len(parts) > MAX_PIECES:
            _fail(f"{where} has {len(parts)} parts; 1 to {MAX_PIECES} are allowed.",
                  "E_LIMIT" if parts else "E_SCHEMA", key=key)
        got, volume = [], 0
        for i, part in enumerate(parts):
            pw = f"{where}.parts[{i}]"
            _typed(part, dict, pw)
            name = _typed(part.get("file"), str, f"{pw}.file")
            _check_name(name, f"{pw}.file")
            if name not in files:
                _fail(f"{pw} names {name!r}, which archive.files does not list.", "E_SCHEMA",
                      key=key)
            skey = _typed(part.get("key"), str, f"{pw}.key")
            start = _typed(part.get("start"), list, f"{pw}.start")
            stop = _typed(part.get("stop"), list, f"{pw}.stop")
            crc = _typed(part.get("crc32"), int, f"{pw}.crc32")
            if not (len(start) == len(stop) == len(shape) and all(
                    type(a) is int and type(b) is int and 0 <= a < b <= n
                    for a, b, n in zip(start, stop, shape))) or not 0 <= crc < 2 ** 32:
                _fail(f"{pw}: start and stop must be {len(shape)} ints with 0 <= start < stop "
                      f"<= {shape}, crc32 an unsigned 32-bit int.", "E_SCHEMA", key=key)
            if skey in names or skey == HEADER_KEY:
                _fail(f"{pw}: the shard key {skey[:80]!r} is used twice in the archive.",
                      "E_DUPLICATE_KEY", key=key)
            names.add(skey)
            held.setdefault(name, []).append(skey)
            volume += math.prod(b - a for a, b in zip(start, stop))
            got.append((name, skey, start, stop, crc))
        for i, (_, _, a0, b0, _) in enumerate(got):  # pairwise disjoint ...
            for _, _, a1, b1, _ in got[:i]:
                if all(x0 < y1 and x1 < y0 for x0, y0, x1, y1 in zip(a0, b0, a1, b1)):
                    _fail(f"{where}: two parts overlap.", "E_ARCHIVE_PIECES", key=key)
        if volume != math.prod(shape):  # ... and as large as the whole: they tile it
            _fail(f"{where}: the parts cover {volume} of the {math.prod(shape)} elements.",
                  "E_ARCHIVE_PIECES", key=key)
        out[key] = (dtype, tuple(shape), got)
    return out


def _combined_crc(dtype, parts):
    crc = 0
    for i, (_, _, start, stop, pcrc) in enumerate(parts):
        n = math.prod(b - a for a, b in zip(start, stop)) * _dtypes.itemsize(dtype)
        crc = pcrc if i == 0 else crc32_combine(crc, pcrc, n)
    return crc


def _shard_doc(doc, name, gen, expect, sums):
    """A shard's document against the index (spec 14.3)."""
    if doc.get("format") != SHARD_FORMAT or parse_version(doc.get("version")) is None:
        _fail(f"shard {name!r}: its document must have format {SHARD_FORMAT!r} and a version.",
              "E_SCHEMA")
    if doc.get("checksum") != "crc32":
        _fail(f"shard {name!r}: checksum algorithm must be 'crc32'.", "E_SCHEMA")
    own = _typed(doc.get("checksums"), dict, f"shard {name!r} checksums")
    if doc.get("archive") != gen:
        _fail(f"shard {name!r} belongs to archive generation {str(doc.get('archive'))[:40]!r}, "
              f"the index to {gen!r}: the folder mixes files of two exports.",
              "E_ARCHIVE_MISMATCH")
    for key in expect:
        if key not in own or type(own[key]) is not int or own[key] != sums.get(key):
            _fail(f"shard {name!r} records crc32 {own.get(key)!r} for tensor {key!r}; the index "
                  f"records {sums.get(key)!r}.", "E_ARCHIVE_MISMATCH", key=key)
    if len(own) != len(expect):
        extra = sorted(set(own) - set(expect))[:3]
        _fail(f"shard {name!r} records checksums of tensors it does not hold: {extra}.",
              "E_SCHEMA")


class _named:
    """Prefix errors raised inside with the file they concern (``shard 'x': ...``)."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OptStateError) and not e.msg.startswith(self.what):
            e.msg = f"{self.what}: {e.msg}"
            where = (f" [path={e.path!r}]" if e.path is not None else
                     f" [tensor={e.key!r}]" if e.key is not None else "")
            e.args = (f"{e.code}: {e.msg}{where}",)
        return False


class _Closer:
    def __init__(self, arch):
        self.close = arch.close


class Archive:
    """An opened archive folder whose index, shards and header document are validated
    (spec 14.6). Quacks like the single-file reader's container: ``doc``, ``version``,
    ``read_all(verify, progress)``, ``file.close()``."""

    def __init__(self, path, *, shards=True):
        self.path = os.fspath(path)
        self.dfd = None
        self.file = _Closer(self)
        try:
            self._open_dir()
            for attempt in range(self.RETRIES + 1):
                try:
                    self._load(shards)
                    break
                except FormatError as e:  # replaced while its shards were being opened
                    if e.code not in ("E_ARCHIVE_MISSING", "E_ARCHIVE_MISMATCH") or \
                            attempt == self.RETRIES or not self._replaced():
                        raise
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None

    def _open_dir(self):
        if os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd:
            try:
                self.dfd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                                   | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                _fail(f"cannot open the archive folder {self.path!r}: {e.strerror}.", "E_IO")

    def _member(self, name, missing):
        return _Member(self.dfd, self.path, name, missing)

    def _load(self, shards):
        try:
            if self.dfd is not None:
                os.stat(INDEX_NAME, dir_fd=self.dfd, follow_symlinks=False)
            else:  # pragma: no cover - platforms without dir_fd
                os.lstat(os.path.join(self.path, INDEX_NAME))
        except FileNotFoundError:
            _fail(f"{self.path!r} is a folder without an archive index ({INDEX_NAME}); an "
                  "optstate archive is a regular file or a folder holding that index. Name "
                  "the file itself, or the archive folder.", "E_NOT_FILE")
        except OSError:
            pass  # the member opener reports it
        with _named("the archive index"):
            member = self._member(INDEX_NAME, f"{self.path!r} has no {INDEX_NAME}.")
            self.index_ident = member.ident
            index = _Part(member, ARCHIVE_FORMAT)
            if set(index.tensors) != {HEADER_KEY}:
                other = sorted(set(index.tensors) - {HEADER_KEY})[:3]
                _fail(f"it holds the tensors {other}; an index holds only the header document "
                      "(tensors live in shards).", "E_CONTAINER")
        doc, self.version = index.doc, index.version
        gen, where, files, held, pieces = _archive_field(doc)
        self.files, self.generation, self.pieces = files, gen, pieces
        sums = _typed(doc.get("checksums"), dict, "header.checksums")
        if not shards:
            self.doc = doc
            return
        crcs = dict(sums)  # the crc32 each shard key must have: whole tensors, then pieces
        for key, (dtype, shape, parts) in pieces.items():
            for _, skey, _, _, pcrc in parts:
                crcs[skey] = pcrc
            if sums.get(key) != _combined_crc(dtype, parts):
                _fail(f"checksums[{key!r}] is not the crc32 of its pieces' bytes in the "
                      "order archive.pieces lists them (spec 14.9).", "E_ARCHIVE_MISMATCH",
                      key=key)
        table, self.parts = {}, []
        for name in sorted(files):
            with _named(f"shard {name!r}"):
                part = self._load_shard(name, files[name], held[name], gen, crcs)
            for key in held[name]:
                if key in table:  # pragma: no cover - a key maps to one file in the index
                    _fail(f"tensor {key!r} is in two shards.", "E_DUPLICATE_KEY", key=key)
                table[key] = part.tensors[key]
            if len(table) > _io.MAX_TENSORS:
                _fail(f"more than {_io.MAX_TENSORS} tensors; the limit is {_io.MAX_TENSORS}.",
                      "E_LIMIT")
            self.parts.append(part)
        for key, (dtype, shape, parts) in pieces.items():
            for name, skey, start, stop, _ in parts:
                sdtype, sshape = table.pop(skey)[:2]
                want = tuple(b - a for a, b in zip(start, stop))
                if sdtype != dtype or tuple(sshape) != want:
                    _fail(f"shard {name!r} holds the piece {skey!r} as {sdtype}{list(sshape)}; "
                          f"the index says {dtype}{list(want)}.", "E_ARCHIVE_MISMATCH", key=key)
            table[key] = (dtype, shape, 0, 0)
        _io._check_empty_tensors(sum(1 for v in table.values() if 0 in v[1]), len(table))
        _header.validate(doc, table, self.version)
        self.doc = doc
        self.tensors = table

    def _load_shard(self, name, record, keys, gen, sums):
        """One shard, checked against the index before any tensor byte is read (14.6)."""
        size, crc = record
        missing = (f"it is missing from the archive {self.path!r}; it holds tensor {keys[0]!r}"
                   + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
                   + ". Restore it (or, if another export replaced the archive meanwhile, "
                   "read it again).")
        f = self._member(name, missing)
        if f.size != size:
            f.close()
            _fail(f"it is {f.size} bytes; the index records {size}"
                  + (": it is truncated." if f.size < size else "."),
                  "E_TRUNCATED" if f.size < size else "E_ARCHIVE_MISMATCH")
        part = _Part(f, SHARD_FORMAT)
        meta_crc = part.metadata.get(_io.META_HEADER_CRC, "").lower()
        if meta_crc != crc:
            _fail(f"its document crc32 is {meta_crc[:8]!r}; the index records {crc!r}: it is "
                  "not the shard this index was written with.", "E_ARCHIVE_MISMATCH")
        expect = set(keys)
        got = set(part.tensors) - {HEADER_KEY}
        if got != expect:
            lost, extra = sorted(expect - got)[:3], sorted(got - expect)[:3]
            _fail(f"it holds tensors {extra} the index does not put there and lacks {lost}.",
                  "E_ARCHIVE_MISMATCH", key=(lost or extra)[0])
        _shard_doc(part.doc, name, gen, expect, sums)
        part.doc = {"checksums": sums}
        part.name, part.ident = name, f.ident
        return part

    # A reader that finds the archive replaced under it (a shard gone or changed, and a new
    # index in place) starts over from the new index, this many times (spec 14.4).
    RETRIES = 3

    def read_all(self, verify, progress=None):
        for attempt in range(self.RETRIES + 1):
            try:
                return self._read_all(verify, progress)
            except FormatError as e:
                if e.code not in ("E_ARCHIVE_MISSING", "E_ARCHIVE_MISMATCH") or \
                        attempt == self.RETRIES or not self._replaced():
                    raise
            self._load(True)  # doc, version, tables: the new export's (the caller reads them)

    def _replaced(self):
        try:
            st = os.stat(INDEX_NAME, dir_fd=self.dfd, follow_symlinks=False) \
                if self.dfd is not None else os.lstat(os.path.join(self.path, INDEX_NAME))
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self.index_ident

    def read_regions(self, wanted, verify, counted=0):
        """({key: array or Regions}, bytes read so far) for ``wanted`` {key: None (whole) or
        [(start, stop), ...]}: only the stored tensors and pieces a region touches are read,
        each whole and verified (spec 14.11). No retry when the archive is replaced: the
        import planned against the export it opened, and fails (``E_ARCHIVE_MISSING`` or
        ``E_ARCHIVE_MISMATCH``) rather than combine two."""
        need = set()
        for key, boxes in wanted.items():
            if key not in self.pieces:
                need.add(key)
                continue
            for _, skey, start, stop, _ in self.pieces[key][2]:
                if boxes is None or any(_meets(box, start, stop) for box in boxes):
                    need.add(skey)
        arrays = self._read_all(verify, keys=need)
        counted += sum(int(np.asarray(a).nbytes) for a in arrays.values())
        out = {}
        for key, boxes in wanted.items():
            if key not in self.pieces:
                arr = arrays.pop(key)
                out[key] = arr if boxes is None else Regions.cut(arr, self.tensors[key][0],
                                                                 boxes)
                continue
            dtype, shape, parts = self.pieces[key]
            regions = [((0,) * len(shape), shape)] if boxes is None else list(boxes)
            filled = {}
            for start, stop in regions:
                if (start, stop) in filled:
                    continue
                arr = None
                for _, skey, a, b, _ in parts:
                    if skey not in arrays or not _meets((start, stop), a, b):
                        continue
                    piece = arrays[skey]
                    if arr is None:
                        bshape = tuple(t - s for s, t in zip(start, stop))
                        arr = _io._new_array(bshape, piece.dtype,
                                             math.prod(bshape) * piece.dtype.itemsize)
                    lo = [max(s, x) for s, x in zip(start, a)]
                    hi = [min(t, y) for t, y in zip(stop, b)]
                    arr[tuple(slice(x - s, y - s) for x, y, s in zip(lo, hi, start))] = \
                        piece[tuple(slice(x - p, y - p) for x, y, p in zip(lo, hi, a))]
                filled[(start, stop)] = arr
            if boxes is None:
                out[key] = filled[regions[0]]
            else:
                out[key] = Regions(shape, dtype, filled)
        return out, counted

    def _read_all(self, verify, progress=None, keys=None):
        def one(part):
            name = part.name
            part.file = self._member(name, f"shard {name!r} of the archive {self.path!r} was "
                                     "removed while it was read: another export replaced the "
                                     "archive. Read it again.")
            try:
                if part.file.ident != part.ident:
                    _fail(f"shard {name!r} changed while the archive was read; read it again.",
                          "E_ARCHIVE_MISMATCH")
                return part.read_all(verify, progress, parallel=not side_by_side,
                                     keys=None if keys is None else wanted[part.name])
            except IntegrityError as e:
                if e.code != "E_CHECKSUM":
                    raise
                raise IntegrityError(f"tensor {e.key!r} in the shard {name!r} does not match "
                                     "its crc32: its bytes are damaged. Restore the archive "
                                     "from a copy.", code=e.code, key=e.key) from None
            finally:
                part.file.close()

        arrays = {}
        parts = self.parts
        if keys is not None:  # only the shards that hold a key asked for
            wanted = {part.name: [k for k in part.tensors if k in keys] for part in parts}
            parts = [part for part in parts if wanted[part.name]]
        total = sum(part.data_len for part in parts)
        # shards read and checksummed side by side, each in one thread; a single shard
        # uses the threads of its own reader
        side_by_side = (verify and len(parts) > 1 and (os.cpu_count() or 1) > 1
                        and total >= _io._PARALLEL_VERIFY_BYTES)
        for got in _io.run_jobs(one, parts, side_by_side):
            arrays.update(got)
        self.finite = {k for part in parts for k in part.finite
                       if k in self.tensors and k not in self.pieces}
        if keys is not None:
            return arrays  # pieces as stored: read_regions assembles what it needs
        for key, (dtype, shape, parts) in self.pieces.items():  # assemble (spec 14.9)
            whole = None
            for _, skey, start, stop, _ in parts:
                piece = arrays.pop(skey)
                if whole is None:
                    whole = _io._new_array(shape, piece.dtype, math.prod(shape) *
                                           piece.dtype.itemsize)
                whole[tuple(slice(a, b) for a, b in zip(start, stop))] = piece
                del piece
            arrays[key] = whole
        return arrays


def _meets(box, start, stop):
    """Whether the region ``box`` ((start, stop)) and the piece [start, stop) share an
    element."""
    return all(a < y and x < b for a, b, x, y in zip(box[0], box[1], start, stop))


def is_archive(path) -> bool:
    """Whether ``path`` names a folder (read as a sharded archive, spec 14)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError, TypeError):
        return False


# ----------------------------------------------------------------------------- many writers

class Sourced(LazyTensor):
    """A lazy tensor that also keeps the framework variable it reads (``handle``): a writer
    among several processes takes from it only the pieces this process owns (spec 14.10)."""

    __slots__ = ("handle",)

    def __init__(self, shape, dtype, fetch, handle):
        super().__init__(shape, dtype, fetch)
        self.handle = handle

    def __array__(self, dtype=None, copy=None):
        value = getattr(self.handle, "value", None)
        if (getattr(value, "is_fully_addressable", True) is False
                and not getattr(value, "is_fully_replicated", False)):
            raise UnsupportedError(
                "a variable is split over several processes and no process holds all of it: "
                "export a sharded archive from every process of the job (export_state(model, "
                "path, max_shard_size=BYTES) with the same path everywhere, spec 14.10).")
        return super().__array__(dtype, copy)


class _JaxProcesses:
    """The processes of a ``jax.distributed`` job: broadcast from process 0 and gather
    from all, through JAX's own collectives (which are also the barriers)."""

    SIZE = 8192
    # every process of the job calls import_state (its variables span the processes): the
    # import reads only each process's regions and the processes agree (spec 14.11)
    collective_import = True

    def __init__(self, jax):
        from jax.experimental import multihost_utils
        self._mu = multihost_utils
        self.index, self.count = jax.process_index(), jax.process_count()

    def _pack(self, text):
        raw = text.encode("utf-8", "replace")[:self.SIZE - 4]
        buf = np.zeros(self.SIZE, np.uint8)
        buf[:4] = np.frombuffer(struct.pack("<I", len(raw)), np.uint8)
        buf[4:4 + len(raw)] = np.frombuffer(raw, np.uint8)
        return buf

    @staticmethod
    def _unpack(buf):
        buf = np.asarray(buf, np.uint8)
        (n,) = struct.unpack("<I", buf[:4].tobytes())
        return buf[4:4 + n].tobytes().decode("utf-8", "replace")

    def broadcast(self, text):
        return self._unpack(self._mu.broadcast_one_to_all(self._pack(text)))

    def gather(self, text):
        out = np.asarray(self._mu.process_allgather(self._pack(text)))
        return [self._unpack(row) for row in out.reshape(self.count, self.SIZE)]


def processes(state=None):
    """The other writers of this export, or None (one process): a ``jax.distributed`` job
    of several processes, or the workers of a ``tf.distribute.MultiWorkerMirroredStrategy``
    that ``state``'s variables belong to (or whose scope the program is in). Neither JAX
    nor TensorFlow is imported here: only a program that uses it is. (TensorFlow's workers
    are found through its private modules, by ``converters._tf_distribute``, which names
    the TensorFlow version if they moved.)"""
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "process_count"):
        try:
            if jax.process_count() > 1:
                return _JaxProcesses(jax)
        except Exception:  # pragma: no cover - a jax without a usable runtime: one process
            pass
    if "tensorflow" in sys.modules:
        from .converters import _tf_distribute
        return _tf_distribute.processes(state)
    return None


def _owned(key, dtype, shape, source, procs):
    """[(start, stop, fetch)] of the pieces of one tensor this process writes: each distinct
    slice of a framework array once, by the device holding its replica 0; anything else (a
    host value, a Python number) whole by process 0."""
    handle = getattr(source, "handle", None)
    arr = getattr(handle, "value", handle) if handle is not None else None
    shards = getattr(arr, "addressable_shards", None)
    whole = ([0] * len(shape), list(shape))
    if shards is None or getattr(arr, "is_fully_addressable", True):
        return [(*whole, lambda: np.asarray(source))] if procs.index == 0 else []
    out, seen = [], set()
    for s in shards:
        if getattr(s, "replica_id", 0) != 0:
            continue
        bounds = [sl.indices(n)[:2] for sl, n in zip(s.index, shape)]
        start, stop = [b[0] for b in bounds], [b[1] for b in bounds]
        if tuple(start) in seen:
            continue
        seen.add(tuple(start))
        out.append((start, stop, lambda s=s: np.asarray(s.data)))
    return out


class _Fetch(LazyTensor):
    __slots__ = ()


def _local_groups(tensors, max_shard_size, procs):
    """This process's share of the planned tensors as shard groups, and the piece records
    {shard key: {tensor, start, stop}} for tensors it writes in part."""
    local, pieces = [], {}
    for key, dtype, shape, source in tensors:
        for start, stop, fetch in _owned(key, dtype, shape, source, procs):
            if list(start) == [0] * len(shape) and list(stop) == list(shape):
                local.append((key, dtype, shape, _Fetch(shape, dtype, fetch)))
                continue
            pshape = tuple(b - a for a, b in zip(start, stop))
            skey = piece_key(key, start, stop)
            pieces[skey] = {"tensor": key, "start": list(start), "stop": list(stop)}
            local.append((skey, dtype, pshape, _Fetch(pshape, dtype, fetch)))
    local.sort(key=lambda t: (-_dtypes.itemsize(t[1]), t[0]))
    return _groups(local, max_shard_size), pieces


def _gather_index(folder: Path, gen: str, doc: dict, planned: dict):
    """Process 0, once every process has written: the index document from the shards'
    own documents (their crc32s and piece records), spec 14.10."""
    files, where, sums, pieces = {}, {}, {}, {}
    for name in sorted(os.listdir(folder)):
        m = _SHARD_FILE.fullmatch(name)
        if not m or m.group(1) != gen:
            continue
        f = _Member(None, str(folder), name, f"shard {name!r} vanished before the commit.")
        part = _Part(f, SHARD_FORMAT)
        files[name] = {"size": f.size, "header_crc32": part.metadata[_io.META_HEADER_CRC]}
        own = part.doc.get("pieces", {})
        for skey, crc in part.doc["checksums"].items():
            if skey in own:
                rec = own[skey]
                pieces.setdefault(rec["tensor"], []).append(
                    {"file": name, "key": skey, "start": rec["start"], "stop": rec["stop"],
                     "crc32": crc})
            else:
                if skey in where:
                    raise FormatError(f"tensor {skey!r} was written by two processes.",
                                      code="E_DUPLICATE_KEY", key=skey)
                where[skey], sums[skey] = name, crc
    table = planned
    out = {}
    for key, parts in pieces.items():
        parts.sort(key=lambda p: p["start"])
        dtype, shape = table[key]
        out[key] = {"dtype": dtype, "shape": list(shape), "parts": parts}
        sums[key] = _combined_crc(dtype, [(p["file"], p["key"], p["start"], p["stop"],
                                           p["crc32"]) for p in parts])
    missing = sorted(set(table) - set(where) - set(out))
    if missing:
        raise FormatError(f"no process wrote the tensors {missing[:3]}: the processes do not "
                          "describe the same state.", code="E_ARCHIVE_PIECES", key=missing[0])
    doc["checksums"] = dict(sorted(sums.items()))
    doc["archive"] = {"generation": gen, "shards": dict(sorted(where.items())),
                      "files": files, **({"pieces": dict(sorted(out.items()))} if out else {})}
    return list(files)


def write_distributed(state, path, *, max_shard_size, fsync=True, procs,
                      _generation=None) -> Path:
    """Write one archive from every process of a job (spec 14.10): every process calls
    this with the same state description and path; each writes the pieces it owns into
    shards of its own; process 0 commits the index once all have written. (``_generation``:
    a fixed generation, for the conformance vectors.)"""
    path = Path(path)
    doc, tensors = _io._plan(state)
    planned = {k: (d, tuple(s)) for k, d, s, _ in tensors}
    parent = path.parent if str(path.parent) else Path(".")
    decision = {}
    if procs.index == 0:
        try:
            fresh = _check_target(path)
            work = _new_work(parent, path.name) if fresh else None
            decision = {"gen": _generation or secrets.token_hex(8), "fresh": fresh,
                        "folder": str(work if fresh else path), "path": os.path.abspath(path)}
        except OptStateError as e:
            decision = {"error": str(e)}
        except OSError as e:
            decision = {"error": str(_io._storage_error(e, path))}
    decision = json.loads(procs.broadcast(json.dumps(decision)))
    if "error" in decision:
        raise StorageError(f"process 0 cannot start the archive: {decision['error']}")
    gen, folder = decision["gen"], Path(decision["folder"])
    mode = _io._file_mode(path / INDEX_NAME)
    created, status = [], ""
    try:
        if os.path.abspath(path) != decision["path"]:
            raise StorageError(f"this process exports to {os.path.abspath(path)!r}, process 0 "
                               f"to {decision['path']!r}: every process of the job names the "
                               "same archive.")
        prepare = getattr(procs, "prepare", None)
        groups, pieces = _local_groups(prepare(tensors) if prepare else tensors,
                                       max_shard_size, procs)
        for i, group in enumerate(groups):
            name = f"shard-{gen}-p{procs.index:05d}-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            fill, _ = _fill_shard(group, gen, {k: pieces[k] for k, *_ in group if k in pieces})
            tmp = _write_temp(folder, name, mode, fsync, fill)
            os.replace(tmp, folder / name)
            created.append(folder / name)
        if fsync and created:
            _io._fsync_dir(folder)
    except BaseException as e:  # told to the others, so that no process waits forever
        said = e.msg if isinstance(e, StorageError) else e  # the code once
        status = f"process {procs.index}: {type(e).__name__}: {said}"[:2000]
        for p in created:
            try:
                os.unlink(p)
            except OSError:
                pass
        if not isinstance(e, Exception):
            raise
    statuses = procs.gather(status)  # every process has written (or failed)
    failed = [s for s in statuses if s]
    result, committed, tmp = "", False, None
    if procs.index == 0:
        try:
            if failed:
                raise StorageError("a process failed to write its shards: " + "; ".join(failed))
            previous = set() if decision["fresh"] else _previous_shards(path)
            names = _gather_index(folder, gen, doc, planned)
            # the index as a reader checks it, before it replaces anything: its archive field
            # (forms, names, pieces tiling) and its header document against the tensors
            _archive_field(doc)
            _header.validate(doc, {k: (d, list(sh)) for k, (d, sh) in planned.items()},
                             CURRENT_VERSION)
            tmp = _write_temp(folder, INDEX_NAME, mode, fsync, _fill_index(doc))
            if decision["fresh"]:
                os.replace(tmp, folder / INDEX_NAME)
                Archive(folder).close()  # and the whole archive, before it gets its name
                os.rename(folder, path)
            else:
                os.replace(tmp, folder / INDEX_NAME)  # the commit
                committed = True
                _clean(folder, set(names), previous - set(names))
            if fsync:
                _io._fsync_dir(parent if decision["fresh"] else folder)
        except BaseException as e:
            said = e.msg if isinstance(e, StorageError) else e  # the code once
            result = "" if committed else (str(said)[:2000] or type(e).__name__)
            if committed:  # pragma: no cover - a cleanup after the commit: not a failure
                pass
            elif decision["fresh"]:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
                for name in os.listdir(folder):
                    m = _SHARD_FILE.fullmatch(name)
                    if m and m.group(1) == gen:
                        try:
                            os.unlink(folder / name)
                        except OSError:
                            pass
    result = procs.broadcast(result)  # every process returns once the archive is committed
    if result:
        raise StorageError(f"the archive {str(path)!r} was not committed: {result}. The "
                           "previous archive (if any) is unchanged.")
    return path
