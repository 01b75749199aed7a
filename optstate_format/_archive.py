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
import math
import os
import re
import secrets
import shutil
import stat
import struct
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np

from . import _dtypes, _header, _io
from ._errors import FormatError, IntegrityError, OptStateError, StorageError, UnsupportedError
from ._paths import HEADER_KEY
from ._versions import CURRENT_VERSION, parse_version

INDEX_NAME = "optstate-index.safetensors"
ARCHIVE_FORMAT = "optstate-archive"
SHARD_FORMAT = "optstate-shard"
# Reader limit (spec 14.6): shards named by one index.
MAX_SHARDS = 100_000
# A shard file name: a plain name in the archive folder (no separator, no leading dot).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_GEN = re.compile(r"[0-9a-f]{16}")
_SHARD_FILE = re.compile(r"shard-([0-9a-f]{16})-[0-9]{5,}-of-[0-9]{5,}\.safetensors")
_TEMP_FILE = re.compile(r"\..+\.([0-9a-f]{8})-([0-9]{1,10})\.[A-Za-z0-9_]+\.optstate\.tmp")


def _fail(msg, code, **kw):
    raise FormatError(msg, code=code, **kw)


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


def _fill_shard(group, gen):
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


def _fsync_dir(folder):
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platform without directory fsync
        pass


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
    path = Path(path)
    doc, tensors = _io._plan(state)
    gen = _generation or secrets.token_hex(8)
    groups = _groups(tensors, max_shard_size)
    if len(groups) > MAX_SHARDS:
        raise UnsupportedError(f"{len(groups)} shards exceed the reader limit of {MAX_SHARDS}; "
                               "raise max_shard_size.")
    names = [shard_name(gen, i + 1, len(groups)) for i in range(len(groups))]
    parent = path.parent if str(path.parent) else Path(".")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _io._storage_error(e, path) from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"cannot write the archive {str(path)!r}: a file is at the path; a "
                           "sharded archive is a folder. Remove the file or choose another "
                           "name. Nothing was written.")
    fresh = st is None
    if not fresh:
        try:
            listing = os.listdir(path)
        except OSError as e:
            raise _io._storage_error(e, path) from None
        if listing and INDEX_NAME not in listing:
            raise StorageError(f"cannot write the archive {str(path)!r}: the folder is not an "
                               f"optstate archive (it has no {INDEX_NAME}) and is not empty. "
                               "Choose another name. Nothing was written.")
    mode = _io._file_mode(path / INDEX_NAME)
    created = []  # files this export put under final names (removed if it fails)
    work = None
    try:
        if fresh:
            _remove_stale_temp_dirs(parent, path.name)
            work = Path(tempfile.mkdtemp(
                prefix=f"{_io._temp_prefix(path.name)}{_io._HOST}-{os.getpid()}.",
                suffix=".optstate.tmp", dir=parent))
            os.chmod(work, 0o777 & ~_io._umask())
            folder = work
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
            _fsync_dir(folder)
        doc["checksums"] = dict(sorted(checksums.items()))
        doc["archive"] = {"generation": gen, "shards": dict(sorted(where.items())),
                          "files": dict(sorted(files.items()))}
        tmp = _write_temp(folder, INDEX_NAME, mode, fsync, _fill_index(doc))
        os.replace(tmp, folder / INDEX_NAME)  # the commit point of an existing archive
        if fresh:
            if fsync:
                _fsync_dir(folder)
            os.rename(work, path)  # the commit point of a new archive
            work = None
            if fsync:
                _fsync_dir(parent)
        else:
            created = []
            if fsync:
                _fsync_dir(folder)
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
    for name in out:
        if name not in held:
            _fail(f"archive.files lists {name!r}, which holds no tensor.", "E_SCHEMA")
    return gen, shards, out, held


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
            self._load(shards)
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
            index = _Part(self._member(INDEX_NAME, f"{self.path!r} has no {INDEX_NAME}."),
                          ARCHIVE_FORMAT)
            if set(index.tensors) != {HEADER_KEY}:
                other = sorted(set(index.tensors) - {HEADER_KEY})[:3]
                _fail(f"it holds the tensors {other}; an index holds only the header document "
                      "(tensors live in shards).", "E_CONTAINER")
        doc, self.version = index.doc, index.version
        gen, where, files, held = _archive_field(doc)
        self.files, self.generation = files, gen
        sums = _typed(doc.get("checksums"), dict, "header.checksums")
        if not shards:
            self.doc = doc
            return
        table, self.parts = {}, []
        for name in sorted(files):
            with _named(f"shard {name!r}"):
                part = self._load_shard(name, files[name], held[name], gen, sums)
            for key in held[name]:
                if key in table:  # pragma: no cover - a key maps to one file in the index
                    _fail(f"tensor {key!r} is in two shards.", "E_DUPLICATE_KEY", key=key)
                table[key] = part.tensors[key]
            if len(table) > _io.MAX_TENSORS:
                _fail(f"more than {_io.MAX_TENSORS} tensors; the limit is {_io.MAX_TENSORS}.",
                      "E_LIMIT")
            self.parts.append(part)
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

    def read_all(self, verify, progress=None):
        arrays = {}
        for part in self.parts:
            name = part.name
            part.file = self._member(name, f"shard {name!r} of the archive {self.path!r} was "
                                     "removed while it was read: another export replaced the "
                                     "archive. Read it again.")
            try:
                if part.file.ident != part.ident:
                    _fail(f"shard {name!r} changed while the archive was read; read it again.",
                          "E_ARCHIVE_MISMATCH")
                arrays.update(part.read_all(verify, progress))
            except IntegrityError as e:
                if e.code != "E_CHECKSUM":
                    raise
                raise IntegrityError(f"tensor {e.key!r} in the shard {name!r} does not match "
                                     "its crc32: its bytes are damaged. Restore the archive "
                                     "from a copy.", code=e.code, key=e.key) from None
            finally:
                part.file.close()
        return arrays


def is_archive(path) -> bool:
    """Whether ``path`` names a folder (read as a sharded archive, spec 14)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError, TypeError):
        return False
