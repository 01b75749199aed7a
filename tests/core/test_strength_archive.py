"""Mutation-strength tests of the archive reader (spec 14.3-14.9) and the import made by
every process of a job (spec 14.11): each index field broken alone, with its exact error
(class, code, tensor key, message); each shard check against the index; the regions read
and the bytes counted; what the processes tell each other. Framework-free and fast; written
against the survivors of the mutmut run of docs/mutation.md (2026-11-29, branch mutarch)."""

import os
import zlib

import numpy as np
import pytest

from optstate_format import _archive
from optstate_format._errors import FormatError
from optstate_format._paths import HEADER_KEY

IDX = _archive.INDEX_NAME
GEN = "0123456789abcdef"
REC = {"size": 8, "header_crc32": "00000000"}
NAME_RULE = (": a shard is named by a plain file name in the archive folder (letters, "
             "digits, '.', '_', '-', not starting with '.', at most 255 characters, not "
             "'optstate-index.safetensors'); a separator, '..' or an absolute path could reach "
             "outside the archive.")


def _doc():
    """An index document's ``archive`` field: a whole tensor in one file, a (2, 4) tensor
    in two pieces (left half in s2, right half in s1)."""
    return {"archive": {
        "generation": GEN,
        "files": {"s1.safetensors": {"size": 100, "header_crc32": "0000abcd"},
                  "s2.safetensors": {"size": 8, "header_crc32": "ffffffff"}},
        "shards": {"slot:w:m": "s1.safetensors"},
        "pieces": {"slot:w:v": {"dtype": "float32", "shape": [2, 4], "parts": [
            {"file": "s2.safetensors", "key": "p0", "start": [0, 0], "stop": [2, 2],
             "crc32": 5},
            {"file": "s1.safetensors", "key": "p1", "start": [0, 2], "stop": [2, 4],
             "crc32": 2 ** 32 - 1}]}}}}


def A(d):
    return d["archive"]


def F(d):
    return d["archive"]["files"]


def S(d):
    return d["archive"]["shards"]


def P(d):
    return d["archive"]["pieces"]["slot:w:v"]


def PP(d, i):
    return P(d)["parts"][i]


def _name_error(where, shown):
    return ("E_ARCHIVE_NAME", None, f"{where} names the shard file {shown!r}{NAME_RULE}")


def _type_error(where, want, got="NoneType"):
    return ("E_SCHEMA", None, f"{where} must be {want}, got {got}.")


def _bounds_error(i):
    return ("E_SCHEMA", "slot:w:v",
            f"archive.pieces['slot:w:v'].parts[{i}]: start and stop must be 2 ints with "
            "0 <= start < stop <= [2, 4], crc32 an unsigned 32-bit int.")


def _raised(fn, *args, cls=FormatError):
    with pytest.raises(cls) as e:
        fn(*args)
    assert type(e.value) is cls
    return e.value.code, e.value.key, e.value.msg


# --- the index's archive field (spec 14.3, 14.9) -------------------------------------------

def test_a_well_formed_archive_field_is_returned_exactly():
    gen, shards, files, held, pieces = _archive._archive_field(_doc())
    assert gen == GEN
    assert shards == {"slot:w:m": "s1.safetensors"}
    assert files == {"s1.safetensors": (100, "0000abcd"), "s2.safetensors": (8, "ffffffff")}
    assert held == {"s1.safetensors": ["slot:w:m", "p1"], "s2.safetensors": ["p0"]}
    assert pieces == {"slot:w:v": ("float32", (2, 4), [
        ("s2.safetensors", "p0", [0, 0], [2, 2], 5),
        ("s1.safetensors", "p1", [0, 2], [2, 4], 2 ** 32 - 1)])}


def test_pieces_are_optional_and_a_255_character_name_is_allowed():
    d = _doc()
    del A(d)["pieces"], F(d)["s2.safetensors"]
    long = "a" + "b" * 254
    F(d)[long] = F(d).pop("s1.safetensors")
    S(d)["slot:w:m"] = long
    assert _archive._archive_field(d) == (GEN, {"slot:w:m": long}, {long: (100, "0000abcd")},
                                          {long: ["slot:w:m"]}, {})


CASES = [
    ('archive missing', lambda d: d.pop("archive"),
     _type_error('header.archive', 'dict')),
    ('archive a list', lambda d: d.update(archive=[]),
     _type_error('header.archive', 'dict', 'list')),
    ('generation missing', lambda d: A(d).pop("generation"),
     _type_error('archive.generation', 'str')),
    ('generation upper case', lambda d: A(d).update(generation="0123456789ABCDEF"),
     ('E_SCHEMA', None,
      "archive.generation '0123456789ABCDEF' must be 16 lowercase hex digits.")),
    ('generation 15 digits', lambda d: A(d).update(generation="0123456789abcde"),
     ('E_SCHEMA', None,
      "archive.generation '0123456789abcde' must be 16 lowercase hex digits.")),
    ('generation 17 digits', lambda d: A(d).update(generation="0123456789abcdef0"),
     ('E_SCHEMA', None,
      "archive.generation '0123456789abcdef0' must be 16 lowercase hex digits.")),
    ('files a list', lambda d: A(d).update(files=[]),
     _type_error('archive.files', 'dict', 'list')),
    ('file name with a separator', lambda d: F(d).update({"../s3.safetensors": dict(REC)}),
     _name_error('archive.files', '../s3.safetensors')),
    ('file name is the index', lambda d: F(d).update({IDX: dict(REC)}),
     _name_error('archive.files', 'optstate-index.safetensors')),
    ('file name not a str', lambda d: F(d).update({7: dict(REC)}),
     _name_error('archive.files', '7')),
    ('file name of 256', lambda d: F(d).update({"a" * 256: dict(REC)}),
     _name_error('archive.files', "a" * 80)),
    ('file record a list', lambda d: F(d).update({"s2.safetensors": []}),
     _type_error("archive.files['s2.safetensors']", 'dict', 'list')),
    ('file size a bool', lambda d: F(d)["s2.safetensors"].update(size=True),
     _type_error("archive.files['s2.safetensors'].size", 'int', 'bool')),
    ('file size 7', lambda d: F(d)["s2.safetensors"].update(size=7),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'] must give a size >= 8 and header_crc32 as 8 lowercase "
      'hex digits.')),
    ('file crc upper case', lambda d: F(d)["s2.safetensors"].update(header_crc32="FFFFFFFF"),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'] must give a size >= 8 and header_crc32 as 8 lowercase "
      'hex digits.')),
    ('file crc 7 digits', lambda d: F(d)["s2.safetensors"].update(header_crc32="fffffff"),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'] must give a size >= 8 and header_crc32 as 8 lowercase "
      'hex digits.')),
    ('file crc 9 digits', lambda d: F(d)["s2.safetensors"].update(header_crc32="fffffffff"),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'] must give a size >= 8 and header_crc32 as 8 lowercase "
      'hex digits.')),
    ('file crc an int', lambda d: F(d)["s2.safetensors"].update(header_crc32=5),
     _type_error("archive.files['s2.safetensors'].header_crc32", 'str', 'int')),
    ('shards a list', lambda d: A(d).update(shards=[]),
     _type_error('archive.shards', 'dict', 'list')),
    ('shard file not a str', lambda d: S(d).update({"slot:w:m": 3}),
     ('E_SCHEMA', 'slot:w:m',
      "archive.shards['slot:w:m'] must be a file name.")),
    ('shard file named badly', lambda d: S(d).update({"slot:w:m": ".s1"}),
     _name_error("archive.shards['slot:w:m']", '.s1')),
    ('shard holds the document', lambda d: S(d).update({HEADER_KEY: "s1.safetensors"}),
     ('E_SCHEMA', None,
      "archive.shards names 'optstate:header'; the document is in the index.")),
    ('shard file not listed', lambda d: S(d).update({"slot:w:m": "s9.safetensors"}),
     ('E_SCHEMA', 'slot:w:m',
      "archive.shards puts tensor 'slot:w:m' in 's9.safetensors', which archive.files does not "
      'list.')),
    ('a file holds nothing', lambda d: F(d).update({"s3.safetensors": dict(REC)}),
     ('E_SCHEMA', None,
      "archive.files lists 's3.safetensors', which holds no tensor.")),
    ('pieces a list', lambda d: A(d).update(pieces=[]),
     _type_error('archive.pieces', 'dict', 'list')),
    ('piece record a list', lambda d: A(d)["pieces"].update({"slot:w:v": []}),
     _type_error("archive.pieces['slot:w:v']", 'dict', 'list')),
    ('piece also whole', lambda d: A(d)["pieces"].update({"slot:w:m": P(d)}),
     ('E_SCHEMA', 'slot:w:m',
      "archive.pieces['slot:w:m']: the tensor is also stored whole (or is the document).")),
    ('piece is the document', lambda d: A(d)["pieces"].update({HEADER_KEY: P(d)}),
     ('E_SCHEMA', 'optstate:header',
      "archive.pieces['optstate:header']: the tensor is also stored whole (or is the document).")),
    ('piece dtype missing', lambda d: P(d).pop("dtype"),
     _type_error("archive.pieces['slot:w:v'].dtype", 'str')),
    ('piece dtype unknown', lambda d: P(d).update(dtype="float99"),
     ('E_DTYPE', 'slot:w:v',
      "archive.pieces['slot:w:v'].dtype 'float99' is not a dtype of section 6.")),
    ('piece shape a tuple', lambda d: P(d).update(shape=(2, 4)),
     _type_error("archive.pieces['slot:w:v'].shape", 'list', 'tuple')),
    ('piece shape negative', lambda d: P(d).update(shape=[2, -4]),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'].shape: shape [2, -4] holds something other than integers >= "
      '0.')),
    ('parts missing', lambda d: P(d).pop("parts"),
     _type_error("archive.pieces['slot:w:v'].parts", 'list')),
    ('parts empty', lambda d: P(d).update(parts=[]),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'] has 0 parts; 1 to 4096 are allowed.")),
    ('part a list', lambda d: P(d)["parts"].__setitem__(0, []),
     _type_error("archive.pieces['slot:w:v'].parts[0]", 'dict', 'list')),
    ('part file missing', lambda d: PP(d, 0).pop("file"),
     _type_error("archive.pieces['slot:w:v'].parts[0].file", 'str')),
    ('part file named badly', lambda d: PP(d, 0).update(file="a/b"),
     _name_error("archive.pieces['slot:w:v'].parts[0].file", 'a/b')),
    ('part file not listed', lambda d: PP(d, 0).update(file="s9.safetensors"),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'].parts[0] names 's9.safetensors', which archive.files does "
      'not list.')),
    ('part key missing', lambda d: PP(d, 0).pop("key"),
     _type_error("archive.pieces['slot:w:v'].parts[0].key", 'str')),
    ('part start missing', lambda d: PP(d, 0).pop("start"),
     _type_error("archive.pieces['slot:w:v'].parts[0].start", 'list')),
    ('part stop missing', lambda d: PP(d, 0).pop("stop"),
     _type_error("archive.pieces['slot:w:v'].parts[0].stop", 'list')),
    ('part crc missing', lambda d: PP(d, 0).pop("crc32"),
     _type_error("archive.pieces['slot:w:v'].parts[0].crc32", 'int')),
    ('part crc negative', lambda d: PP(d, 0).update(crc32=-1),
     _bounds_error(0)),
    ('part crc 2**32', lambda d: PP(d, 0).update(crc32=2 ** 32),
     _bounds_error(0)),
    ('part start short', lambda d: PP(d, 0).update(start=[0]),
     _bounds_error(0)),
    ('part stop short', lambda d: PP(d, 0).update(stop=[2]),
     _bounds_error(0)),
    ('part start float', lambda d: PP(d, 0).update(start=[0.0, 0]),
     _bounds_error(0)),
    ('part stop float', lambda d: PP(d, 0).update(stop=[2, 2.0]),
     _bounds_error(0)),
    ('part empty', lambda d: PP(d, 0).update(stop=[2, 0]),
     _bounds_error(0)),
    ('part past the end', lambda d: PP(d, 1).update(stop=[2, 5]),
     _bounds_error(1)),
    ('part before the start', lambda d: PP(d, 0).update(start=[-1, 0]),
     _bounds_error(0)),
    ('part key twice', lambda d: PP(d, 1).update(key="p0"),
     ('E_DUPLICATE_KEY', 'slot:w:v',
      "archive.pieces['slot:w:v'].parts[1]: the shard key 'p0' is used twice in the archive.")),
    ("part key a whole tensor's", lambda d: PP(d, 1).update(key="slot:w:m"),
     ('E_DUPLICATE_KEY', 'slot:w:v',
      "archive.pieces['slot:w:v'].parts[1]: the shard key 'slot:w:m' is used twice in the "
      'archive.')),
    ("part key the document's", lambda d: PP(d, 1).update(key=HEADER_KEY),
     ('E_DUPLICATE_KEY', 'slot:w:v',
      "archive.pieces['slot:w:v'].parts[1]: the shard key 'optstate:header' is used twice in "
      'the archive.')),
    ('parts overlap', lambda d: PP(d, 1).update(start=[1, 1]),
     ('E_ARCHIVE_PIECES', 'slot:w:v',
      "archive.pieces['slot:w:v']: two parts overlap.")),
    ('parts short', lambda d: PP(d, 1).update(stop=[1, 4]),
     ('E_ARCHIVE_PIECES', 'slot:w:v',
      "archive.pieces['slot:w:v']: the parts cover 6 of the 8 elements.")),
]


@pytest.mark.parametrize("edit, want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_broken_archive_field_is_refused_with_its_error(edit, want):
    d = _doc()
    edit(d)
    assert _raised(_archive._archive_field, d) == want


def test_the_shard_and_piece_limits_are_inclusive(monkeypatch):
    monkeypatch.setattr(_archive, "MAX_SHARDS", 2)
    monkeypatch.setattr(_archive, "MAX_PIECES", 2)
    assert _archive._archive_field(_doc())[0] == GEN  # 2 files, 2 parts: at the limits
    monkeypatch.setattr(_archive, "MAX_SHARDS", 1)
    assert _raised(_archive._archive_field, _doc()) == (
        "E_LIMIT", None, "the index names 2 shards; the limit is 1.")
    monkeypatch.setattr(_archive, "MAX_SHARDS", 2)
    monkeypatch.setattr(_archive, "MAX_PIECES", 1)
    assert _raised(_archive._archive_field, _doc()) == (
        "E_LIMIT", "slot:w:v", "archive.pieces['slot:w:v'] has 2 parts; 1 to 1 are allowed.")


# --- a shard's own document against the index (spec 14.3) ----------------------------------

def _shard_doc():
    return {"format": "optstate-shard", "version": "1.2", "checksum": "crc32", "archive": GEN,
            "checksums": {"a": 1, "b": 2}}


_FORM = ": its document must have format 'optstate-shard' and a version."
SHARD_DOC_CASES = [
    ("another format", lambda d: d.update(format="optstate-archive"), ("E_SCHEMA", None, _FORM)),
    ("no version", lambda d: d.pop("version"), ("E_SCHEMA", None, _FORM)),
    ("a bad version", lambda d: d.update(version="x"), ("E_SCHEMA", None, _FORM)),
    ("another checksum", lambda d: d.update(checksum="sha256"),
     ("E_SCHEMA", None, ": checksum algorithm must be 'crc32'.")),
    ("checksums a list", lambda d: d.update(checksums=[]),
     ("E_SCHEMA", None, " checksums must be dict, got list.")),
    ("another generation", lambda d: d.update(archive="f" * 16),
     ("E_ARCHIVE_MISMATCH", None, " belongs to archive generation 'ffffffffffffffff', the index "
      "to '0123456789abcdef': the folder mixes files of two exports.")),
    ("no generation", lambda d: d.pop("archive"),
     ("E_ARCHIVE_MISMATCH", None, " belongs to archive generation 'None', the index to "
      "'0123456789abcdef': the folder mixes files of two exports.")),
    ("a long generation", lambda d: d.update(archive="9" * 50),
     ("E_ARCHIVE_MISMATCH", None, f" belongs to archive generation {'9' * 40!r}, the index to "
      "'0123456789abcdef': the folder mixes files of two exports.")),
    ("a crc32 missing", lambda d: d["checksums"].pop("b"),
     ("E_ARCHIVE_MISMATCH", "b", " records crc32 None for tensor 'b'; the index records 2.")),
    ("a crc32 a float", lambda d: d["checksums"].update(b=2.0),
     ("E_ARCHIVE_MISMATCH", "b", " records crc32 2.0 for tensor 'b'; the index records 2.")),
    ("a crc32 a bool", lambda d: d["checksums"].update(a=True),
     ("E_ARCHIVE_MISMATCH", "a", " records crc32 True for tensor 'a'; the index records 1.")),
    ("a crc32 differs", lambda d: d["checksums"].update(b=3),
     ("E_ARCHIVE_MISMATCH", "b", " records crc32 3 for tensor 'b'; the index records 2.")),
    ("a crc32 the index lacks", lambda d: d["checksums"].update(z=0),
     ("E_ARCHIVE_MISMATCH", "z", " records crc32 0 for tensor 'z'; the index records None.")),
    ("crc32s of other tensors", lambda d: d["checksums"].update(c=3, d=4, e=5, f=6),
     ("E_SCHEMA", None, " records checksums of tensors it does not hold: ['c', 'd', 'e'].")),
]


@pytest.mark.parametrize("edit, want", [c[1:] for c in SHARD_DOC_CASES],
                         ids=[c[0] for c in SHARD_DOC_CASES])
def test_each_broken_shard_document_is_refused_with_its_error(edit, want):
    d = _shard_doc()
    edit(d)
    expect = ["a", "b", "z"] if "z" in d["checksums"] else ["a", "b"]
    code, key, msg = _raised(_archive._shard_doc, d, "s1", GEN, expect, {"a": 1, "b": 2, "c": 3})
    assert (code, key, msg) == (want[0], want[1], f"shard 's1'{want[2]}")


def test_a_matching_shard_document_passes():
    assert _archive._shard_doc(_shard_doc(), "s1", GEN, ["a", "b"], {"a": 1, "b": 2}) is None


# --- crc32 of pieces, regions meeting pieces ------------------------------------------------

@pytest.mark.parametrize("dtype, item", [("float32", 4), ("float64", 8), ("int8", 1),
                                         ("bfloat16", 2)])
def test_the_crc32_of_pieces_is_the_crc32_of_their_bytes_in_order(dtype, item):
    rng = np.random.default_rng(3)
    boxes = [([0, 0], [2, 3]), ([2, 0], [3, 3]), ([0, 3], [3, 5])]
    raw = [rng.bytes(item * (b[0] - a[0]) * (b[1] - a[1])) for a, b in boxes]
    parts = [("f", f"k{i}", a, b, zlib.crc32(r)) for i, ((a, b), r) in enumerate(zip(boxes, raw))]
    assert _archive._combined_crc(dtype, parts) == zlib.crc32(b"".join(raw))
    assert _archive._combined_crc(dtype, parts[:1]) == zlib.crc32(raw[0])
    assert _archive._combined_crc(dtype, []) == 0


def test_a_region_meets_a_piece_only_when_they_share_an_element():
    piece = ([2, 4], [5, 8])
    assert _archive._meets(((0, 0), (3, 5)), *piece)      # shares [2, 4]
    assert _archive._meets(((4, 7), (9, 9)), *piece)      # shares [4, 7]
    assert _archive._meets(((2, 4), (5, 8)), *piece)
    assert not _archive._meets(((0, 0), (2, 9)), *piece)  # ends where the piece starts
    assert not _archive._meets(((5, 0), (9, 9)), *piece)  # starts where the piece ends
    assert not _archive._meets(((0, 0), (9, 4)), *piece)  # second axis only touches
    assert not _archive._meets(((0, 8), (9, 9)), *piece)
    assert _archive._meets(((), ()), [], [])              # a scalar meets itself


def test_named_prefixes_our_errors_once_with_the_tensor_or_path():
    for kw, where in (({"key": "t"}, " [tensor='t']"), ({"path": "p", "key": "t"}, " [path='p']"),
                      ({}, "")):
        with pytest.raises(FormatError) as e:
            with _archive._named("shard 'x'"):
                raise FormatError("it is bad.", code="E_SCHEMA", **kw)
        assert e.value.msg == "shard 'x': it is bad."
        assert str(e.value) == f"E_SCHEMA: shard 'x': it is bad.{where}"
    with pytest.raises(FormatError) as e:  # already named: left as it is
        with _archive._named("shard 'x'"):
            raise FormatError("shard 'x' is bad.", code="E_SCHEMA")
    assert str(e.value) == "E_SCHEMA: shard 'x' is bad."
    with pytest.raises(KeyError) as e:  # not ours: untouched
        with _archive._named("shard 'x'"):
            raise KeyError("k")
    assert e.value.args == ("k",)


# --- an archive on disk: one tensor in three pieces over three shards -----------------------

V = np.arange(24, dtype=np.float32).reshape(4, 6) - 5.5
BM = np.arange(6, dtype=np.float64) * 1.25
TILES = ((0, 4, 0, 2), (0, 2, 2, 6), (2, 4, 2, 6))  # rows, columns of the pieces of slot:w:m


def _state(v=V, tiles=TILES):
    import optstate_format as osf
    from fake_processes import Arr, Handle, Shard
    pieces = [Shard((slice(a, b), slice(c, d)), 0, v[a:b, c:d]) for a, b, c, d in tiles]
    return osf.OptimizerState(osf.OptimizerInfo("adam", "Adam"), step=2, weights=[
        osf.WeightEntry("w", v.shape, "float32", hints={"structural": None, "name": "w"}, slots={
            "m": _archive.Sourced(v.shape, "float32", None, Handle(Arr(pieces))), "v": v + 1}),
        osf.WeightEntry("b", (6,), "float64", hints={"structural": None, "name": "b"},
                        slots={"m": BM, "v": BM * 2})],
        globals={"iterations": np.array(2, np.int64)})


def _write(path, state=None, size=40):
    from fake_processes import run_processes
    out = run_processes(1, lambda p, procs: _archive.write_distributed(
        state or _state(), path, max_shard_size=size, fsync=False, procs=procs))
    assert out == [path]
    return path


@pytest.fixture
def arc(tmp_path):
    return _write(tmp_path / "a")


def _index(path):
    a = _archive.Archive(path, shards=False)
    a.close()
    return a.doc


def _edit(path, edit):
    """Rewrite the index of ``path`` with ``edit(doc)`` applied."""
    doc = _index(path)
    edit(doc)
    (path / IDX).unlink()
    tmp = _archive._write_temp(path, IDX, 0o644, False, _archive._fill_index(doc))
    (path / IDX).parent.joinpath(tmp).rename(path / IDX)


def _parts(doc, key="slot:w:m"):
    return doc["archive"]["pieces"][key]["parts"]


def _recombine(doc, key="slot:w:m"):
    rec = doc["archive"]["pieces"][key]
    doc["checksums"][key] = _archive._combined_crc(rec["dtype"], [
        (p["file"], p["key"], p["start"], p["stop"], p["crc32"]) for p in rec["parts"]])


def _opened(path):
    with pytest.raises(FormatError) as e:
        _archive.Archive(path)
    return e.value.code, e.value.key, e.value.msg


def test_an_archive_with_pieces_opens_to_its_exact_tables_and_reads_whole(arc):
    a = _archive.Archive(arc)
    doc = _index(arc)
    names = sorted(doc["archive"]["files"])
    assert a.generation == doc["archive"]["generation"] and a.version == (1, 2)
    assert [p.name for p in a.parts] == names and len(names) == 7
    assert a.tensors == {"global:iterations": ("int64", (), 0, 8),
                         "slot:b:m": ("float64", (6,), 0, 48),
                         "slot:b:v": ("float64", (6,), 0, 48),
                         "slot:w:v": ("float32", (4, 6), 0, 96),
                         "slot:w:m": ("float32", (4, 6), 0, 0)}
    assert a.files == {n: (r["size"], r["header_crc32"])
                       for n, r in doc["archive"]["files"].items()}
    assert list(a.pieces) == ["slot:w:m"] and a.pieces["slot:w:m"][:2] == ("float32", (4, 6))
    got = a.read_all(True)
    assert sorted(got) == ["global:iterations", "slot:b:m", "slot:b:v", "slot:w:m", "slot:w:v"]
    np.testing.assert_array_equal(got["slot:w:m"], V)
    assert got["slot:w:m"].dtype == np.float32 and got["slot:w:m"].flags.writeable
    np.testing.assert_array_equal(got["slot:w:v"], V + 1)
    np.testing.assert_array_equal(got["slot:b:v"], BM * 2)
    assert int(got["global:iterations"]) == 2
    for k, v in a.read_all(False).items():
        np.testing.assert_array_equal(v, got[k])


def test_an_index_only_open_reads_no_shard(arc):
    for name in sorted(_index(arc)["archive"]["files"]):
        (arc / name).unlink()
    a = _archive.Archive(arc, shards=False)
    assert a.doc["archive"]["generation"] == a.generation and not hasattr(a, "tensors")
    assert a.dfd is not None
    a.close()
    assert a.dfd is None


def test_regions_read_only_the_pieces_they_meet_and_count_their_bytes(arc):
    a = _archive.Archive(arc)
    cases = [  # boxes of slot:w:m, the pieces (of 32 bytes each) they meet
        ([((0, 0), (1, 1))], 32),
        ([((0, 2), (2, 6))], 32),
        ([((1, 1), (3, 4))], 96),
        ([((3, 3), (4, 6)), ((3, 3), (4, 6))], 32),  # asked twice: read and cut once
        ([((0, 0), (4, 2)), ((2, 2), (4, 6))], 64),
    ]
    for boxes, nbytes in cases:
        out, counted = a.read_regions({"slot:w:m": boxes}, True, 1000)
        assert counted == 1000 + nbytes, boxes
        r = out["slot:w:m"]
        assert (type(r).__name__, r.shape, r.dtype) == ("Regions", (4, 6), "float32")
        assert list(r.boxes) == list(dict.fromkeys(boxes))
        for (r0, c0), (r1, c1) in boxes:
            arr = r.boxes[((r0, c0), (r1, c1))]
            np.testing.assert_array_equal(arr, V[r0:r1, c0:c1])
            assert arr.dtype == np.float32
    out, counted = a.read_regions({"slot:w:m": None, "slot:w:v": [((1, 2), (3, 5))],
                                   "slot:b:m": None}, False)
    assert counted == 96 + 96 + 48
    np.testing.assert_array_equal(out["slot:w:m"], V)
    np.testing.assert_array_equal(out["slot:b:m"], BM)
    r = out["slot:w:v"]
    assert (r.shape, r.dtype, list(r.boxes)) == ((4, 6), "float32", [((1, 2), (3, 5))])
    np.testing.assert_array_equal(r.boxes[((1, 2), (3, 5))], (V + 1)[1:3, 2:5])
    assert a.read_regions({}, True, 7) == ({}, 7)


def _names(path):
    return sorted(_index(path)["archive"]["files"])


def _swap_first_two_parts(doc):
    a, b = _parts(doc)[:2]
    for f in ("key", "file", "crc32"):
        a[f], b[f] = b[f], a[f]
    _recombine(doc)


def test_index_checks_against_the_shards_name_the_tensor_and_shard(arc):
    names = _names(arc)
    by_key = {p["key"]: p["file"] for p in _parts(_index(arc))}
    first, second = by_key["slot:w:m@0:4,0:2"], by_key["slot:w:m@0:2,2:6"]
    crc0 = _parts(_index(arc))[0]["crc32"]

    def crc_off(doc):
        _parts(doc)[0]["crc32"] ^= 1
        _recombine(doc)
    cases = [
        (lambda d: d.update(checksums=[]), ("E_SCHEMA", None,
                                            "header.checksums must be dict, got list.")),
        (lambda d: d["checksums"].update({"slot:w:m": 1}), (
            "E_ARCHIVE_MISMATCH", "slot:w:m", "checksums['slot:w:m'] is not the crc32 of its "
            "pieces' bytes in the order archive.pieces lists them (spec 14.9).")),
        (crc_off, ("E_ARCHIVE_MISMATCH", "slot:w:m@0:4,0:2",
                   f"shard {first!r} records crc32 {crc0} for tensor 'slot:w:m@0:4,0:2'; the "
                   f"index records {crc0 ^ 1}.")),
        (lambda d: d["archive"]["pieces"]["slot:w:m"].update(dtype="int32"), (
            "E_ARCHIVE_MISMATCH", "slot:w:m", f"shard {first!r} holds the piece "
            "'slot:w:m@0:4,0:2' as float32[4, 2]; the index says int32[4, 2].")),
        (_swap_first_two_parts, (
            "E_ARCHIVE_MISMATCH", "slot:w:m", f"shard {second!r} holds the piece "
            "'slot:w:m@0:2,2:6' as float32[2, 4]; the index says float32[4, 2].")),
        (lambda d: d["archive"]["files"][names[1]].update(header_crc32="00000000"), (
            "E_ARCHIVE_MISMATCH", None, f"shard {names[1]!r}: its document crc32 is "
            f"{_archive.Archive(arc).parts[1].metadata['optstate.header_crc32']!r}; the index "
            "records '00000000': it is not the shard this index was written with.")),
    ]
    index = (arc / IDX).read_bytes()
    for edit, want in cases:
        (arc / IDX).write_bytes(index)
        _edit(arc, edit)
        assert _opened(arc) == want


def test_shard_files_are_checked_against_the_index(arc):
    names = _names(arc)
    raw = (arc / names[1]).read_bytes()
    pre = f"shard {names[1]!r}: "
    (arc / names[1]).write_bytes(raw[:-1])
    assert _opened(arc) == ("E_TRUNCATED", None, pre + f"it is {len(raw) - 1} bytes; the index "
                            f"records {len(raw)}: it is truncated.")
    (arc / names[1]).write_bytes(raw + b"x")
    assert _opened(arc) == ("E_ARCHIVE_MISMATCH", None, pre + f"it is {len(raw) + 1} bytes; "
                            f"the index records {len(raw)}.")
    (arc / names[1]).unlink()
    assert _opened(arc) == ("E_ARCHIVE_MISSING", None, pre + f"it is missing from the archive "
                            f"{str(arc)!r}; it holds tensor 'slot:b:m'. Restore it (or, if "
                            "another export replaced the archive meanwhile, read it again).")
    (arc / names[1]).write_bytes(raw)

    def moved(d):
        sh = d["archive"]["shards"]
        sh["slot:b:m"], sh["slot:b:v"] = sh["slot:b:v"], sh["slot:b:m"]
    _edit(arc, moved)
    assert _opened(arc) == ("E_ARCHIVE_MISMATCH", "slot:b:v", pre + "it holds tensors "
                            "['slot:b:m'] the index does not put there and lacks ['slot:b:v'].")


def test_a_missing_shard_of_several_tensors_says_how_many_more(tmp_path):
    import optstate_format as osf
    from helpers import adam_state
    path = osf.write(adam_state(n_weights=3), tmp_path / "a", max_shard_size=10 ** 6)
    (name,) = _names(path)
    keys = sorted(_index(path)["archive"]["shards"])
    (path / name).unlink()
    assert _opened(path) == ("E_ARCHIVE_MISSING", None, f"shard {name!r}: it is missing from the "
                             f"archive {str(path)!r}; it holds tensor {keys[0]!r} and "
                             f"{len(keys) - 1} more. Restore it (or, if another export replaced "
                             "the archive meanwhile, read it again).")


def test_the_tensor_limit_counts_stored_pieces(arc, monkeypatch):
    from optstate_format import _io
    monkeypatch.setattr(_io, "MAX_TENSORS", 7)  # 4 whole tensors and 3 pieces
    assert len(_archive.Archive(arc).tensors) == 5
    monkeypatch.setattr(_io, "MAX_TENSORS", 6)
    assert _opened(arc) == ("E_LIMIT", None, "more than 6 tensors; the limit is 6.")


def test_a_broken_index_file_is_named(arc, tmp_path):
    (tmp_path / "empty").mkdir()
    assert _opened(tmp_path / "empty") == (
        "E_NOT_FILE", None, f"{str(tmp_path / 'empty')!r} is a folder without an archive index "
        "(optstate-index.safetensors); an optstate archive is a regular file or a folder "
        "holding that index. Name the file itself, or the archive folder.")
    index = (arc / IDX).read_bytes()
    for raw, want in [
            (b"1234567", ("E_TRUNCATED", None, "the archive index: it is 7 bytes; it is "
                                               "truncated.")),
            ((100).to_bytes(8, "little") + b"{}" + b" " * 90, (
                "E_HEADER_BOUNDS", None, "the archive index: its container header declares 100 "
                "bytes; the file has 92 after the length field (limit 104857600).")),
            ((arc / _names(arc)[0]).read_bytes(), (
                "E_NOT_OPTSTATE", None, "the archive index: its metadata 'optstate.format' is "
                "'optstate-shard', expected 'optstate-archive'."))]:
        (arc / IDX).write_bytes(raw)
        assert _opened(arc) == want
    (arc / IDX).write_bytes(index[:8] + index[8:])
    assert _archive.Archive(arc).generation == _index(arc)["archive"]["generation"]


def test_a_damaged_piece_is_named_with_its_shard_and_only_when_read(arc):
    from optstate_format._errors import IntegrityError
    a = _archive.Archive(arc)
    part = a.parts[4]
    (key,) = set(part.tensors) - {HEADER_KEY}
    assert key == "slot:w:m@0:4,0:2"
    raw = bytearray((arc / part.name).read_bytes())
    raw[part.data_start + part.tensors[key][2] + 1] ^= 0x40
    (arc / part.name).write_bytes(bytes(raw))
    a = _archive.Archive(arc)
    msg = (f"tensor {key!r} in the shard {part.name!r} does not match its crc32: its bytes are "
           "damaged. Restore the archive from a copy.")
    for read in (lambda: a.read_all(True), lambda: a.read_regions({"slot:w:m": None}, True),
                 lambda: a.read_regions({"slot:w:m": [((3, 1), (4, 2))]}, True)):
        with pytest.raises(IntegrityError) as e:
            read()
        assert (type(e.value), e.value.code, e.value.key, e.value.msg) == (
            IntegrityError, "E_CHECKSUM", key, msg)
    got, n = a.read_regions({"slot:w:m": [((0, 3), (1, 4))]}, True)  # not the damaged piece
    np.testing.assert_array_equal(got["slot:w:m"].boxes[((0, 3), (1, 4))], V[0:1, 3:4])
    assert n == 32
    assert a.read_all(False)["slot:w:m"][0, 0] != V[0, 0]  # read unverified: the bad byte


def test_a_shard_replaced_or_removed_after_opening_is_refused(arc):
    a = _archive.Archive(arc)
    name = a.parts[2].name
    raw = (arc / name).read_bytes()
    os.unlink(arc / name)
    with pytest.raises(FormatError) as e:
        a.read_all(True)
    assert (e.value.code, e.value.key, e.value.msg) == (
        "E_ARCHIVE_MISSING", None, f"shard {name!r} of the archive {str(arc)!r} was removed "
        "while it was read: another export replaced the archive. Read it again.")
    (arc / name).write_bytes(raw)  # the same bytes, another file
    os.utime(arc / name, ns=(1, 1))
    with pytest.raises(FormatError) as e:
        a.read_regions({"slot:b:v": None}, True)
    assert (e.value.code, e.value.key, e.value.msg) == (
        "E_ARCHIVE_MISMATCH", None, f"shard {name!r} changed while the archive was read; read "
        "it again.")
    got, _ = a.read_regions({"slot:b:m": None}, True)  # the other shards are as opened
    np.testing.assert_array_equal(got["slot:b:m"], BM)


@pytest.mark.parametrize("verify, over, cpus, side", [
    (True, 0, 2, True), (True, 1, 2, False), (False, 0, 2, False), (True, 0, 1, False),
    (True, 0, None, False)])
def test_shards_are_read_side_by_side_only_when_it_pays(arc, monkeypatch, verify, over, cpus,
                                                        side):
    """In threads when verifying more than one shard, with more than one cpu, and at least
    _PARALLEL_VERIFY_BYTES of data (here set to the archive's data bytes + ``over``)."""
    from optstate_format import _io
    data = sum(p.data_len for p in _archive.Archive(arc).parts)
    monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", data + over)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    seen, run = [], _io.run_jobs

    def spy(fn, items, parallel):
        seen.append((len(items), parallel))
        return run(fn, items, parallel)
    monkeypatch.setattr(_io, "run_jobs", spy)
    got = _archive.Archive(arc).read_all(verify)
    np.testing.assert_array_equal(got["slot:w:m"], V)
    assert seen[0] == (7, side)
    seen.clear()
    monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", 1)
    _archive.Archive(arc).read_regions({"slot:b:m": None}, verify)  # one shard: never
    assert seen[0] == (1, False)


def test_large_whole_tensors_read_are_proven_finite_and_pieces_are_not(tmp_path):
    v = np.arange(40000, dtype=np.float32).reshape(200, 200) / 7
    tiles = ((0, 100, 0, 200), (100, 200, 0, 200))
    path = _write(tmp_path / "big", _state(v, tiles))
    a = _archive.Archive(path)
    got = a.read_all(True)
    np.testing.assert_array_equal(got["slot:w:m"], v)
    assert a.finite == {"slot:w:v"}  # the pieces of slot:w:m were proven, not the tensor
    a.read_regions({"slot:w:m": None, "slot:b:m": None}, True)
    assert a.finite == set()
    a.read_regions({"slot:w:v": [((0, 0), (1, 1))]}, True)
    assert a.finite == {"slot:w:v"}


# --- what the processes of a collective import tell each other (spec 14.11) -----------------

class _Procs:
    """Process ``index`` of ``count``: its gather returns the rows given (its own replaced by
    what it sends), and keeps what it sent."""

    def __init__(self, rows, index=0):
        self.rows, self.index, self.count, self.sent = rows, index, len(rows), []

    def gather(self, text):
        self.sent.append(text)
        rows = list(self.rows)
        rows[self.index] = text
        return rows


def _row(ident="archive g", error=None):
    import json
    return json.dumps({"ident": ident, "error": error})


def test_told_is_bounded_and_keeps_class_code_key_and_path():
    from optstate_format import _api
    from optstate_format._errors import IntegrityError, OptStateError
    e = IntegrityError("m" * 700, code="E_CHECKSUM", key="k" * 300, path="p" * 300)
    assert _api._told(e) == {"class": "IntegrityError", "code": "E_CHECKSUM", "msg": "m" * 600,
                             "key": "k" * 200, "path": "p" * 200}
    assert _api._told(OptStateError("short", code="E_ASSIGN")) == {
        "class": "OptStateError", "code": "E_ASSIGN", "msg": "short", "key": None,
        "path": None}
    assert _api._told(RuntimeError("x" * 700)) == {
        "class": "OptStateError", "code": "E_ASSIGN", "msg": ("RuntimeError: " + "x" * 700)[:600],
        "key": None, "path": None}
    assert _api._told(KeyError(3)) == {"class": "OptStateError", "code": "E_ASSIGN",
                                       "msg": "KeyError: 3", "key": None, "path": None}


def test_agree_passes_when_every_process_opened_the_same_export_and_succeeded():
    import json
    from optstate_format import _api
    procs = _Procs([None, _row(), _row()])
    assert _api._agree(procs, "archive g", None) is None
    assert [json.loads(t) for t in procs.sent] == [{"ident": "archive g", "error": None}]


def test_agree_raises_this_processes_own_failure_after_telling_the_others():
    import json
    from optstate_format import _api
    from optstate_format._errors import MatchError
    procs = _Procs([_row(), None], index=1)
    mine = MatchError("no such slot", code="E_MATCH_SLOTS", path="w")
    with pytest.raises(MatchError) as e:
        _api._agree(procs, "archive g", mine)
    assert e.value is mine
    assert [json.loads(t) for t in procs.sent] == [{"ident": "archive g", "error": {
        "class": "MatchError", "code": "E_MATCH_SLOTS", "msg": "no such slot", "key": None,
        "path": "w"}}]


@pytest.mark.parametrize("after, tail", [
    (False, "no process assigned anything."),
    (True, "every process restores what it assigned.")])
def test_agree_raises_the_first_failure_of_another_process_as_its_class(after, tail):
    from optstate_format import _api
    from optstate_format._errors import IntegrityError, OptStateError
    told = {"class": "IntegrityError", "code": "E_CHECKSUM", "msg": "bad bytes", "key": "k",
            "path": "f"}
    other = dict(told, **{"class": "StorageError", "code": "E_IO", "msg": "second"})
    procs = _Procs([None, _row(error=told), _row(error=other)])
    with pytest.raises(IntegrityError) as e:
        _api._agree(procs, "archive g", None, after)
    assert (type(e.value), e.value.code, e.value.key, e.value.path, e.value.msg) == (
        IntegrityError, "E_CHECKSUM", "k", "f", f"process 1 of 3 failed (bad bytes); {tail}")
    unknown = dict(told, **{"class": "SystemExit"})  # a class that is not ours
    with pytest.raises(OptStateError) as e:
        _api._agree(_Procs([_row(error=unknown), None], 1), "archive g", None, after)
    assert (type(e.value), e.value.code, e.value.msg) == (
        OptStateError, "E_CHECKSUM", f"process 0 of 2 failed (bad bytes); {tail}")


def test_agree_refuses_processes_that_opened_different_exports():
    from optstate_format import _api
    procs = _Procs([None, _row("file 1 8"), _row("archive b"), _row("archive b")])
    with pytest.raises(FormatError) as e:
        _api._agree(procs, "archive b", None)
    assert (e.value.code, e.value.key, e.value.msg) == (
        "E_ARCHIVE_MISMATCH", None, "the processes opened different exports (archive b, file "
        "1 8): the file was replaced during the import. Nothing was assigned; import again.")
    procs = _Procs([None, _row(None)])  # a process that failed before opening says None
    with pytest.raises(FormatError):
        _api._agree(procs, "archive b", None)


def test_nonfinite_values_read_are_noted_with_their_count():
    from optstate_format import _api
    from optstate_format._state import Regions
    from optstate_format._match import ImportReport
    rep = ImportReport()
    _api._note_read_nonfinite(rep, np.array([1.0, np.nan, np.inf, -np.inf]), "w slot 'm'")
    _api._note_read_nonfinite(rep, np.array([1.0, 2.0]), "w slot 'v'")
    _api._note_read_nonfinite(rep, Regions((4,), "float64", {
        ((0,), (2,)): np.array([np.nan, 1.0]), ((2,), (4,)): np.array([np.nan, np.nan])}),
        "b slot 'm'")
    _api._note_read_nonfinite(rep, Regions((4,), "float64", {((0,), (1,)): np.zeros(1)}), "x")
    assert rep.notes == [
        "w slot 'm': 3 NaN/Inf value(s), imported as they are",
        "b slot 'm': 3 NaN/Inf value(s) in this process's regions, imported as they are"]


# --- the journal's agreement after the last assignment (spec 14.11) -------------------------

class _Vars:
    """A dict adapter: ``fail`` names the handle whose assignment raises."""

    def __init__(self, fail=None):
        self.values = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
        self.fail, self.log = fail, []

    def snapshot(self, handle):
        return self.values[handle].copy()

    def restore(self, handle, value):
        self.log.append(("restore", handle))
        self.values[handle] = np.array(value)

    def assign(self, handle, value):
        if handle == self.fail:
            raise RuntimeError("device lost")
        self.log.append(("assign", handle))
        self.values[handle] = np.array(value)


def _assignments():
    from optstate_format.adapter import Variable
    return [(Variable("a", (2,), "float64"), np.array([5.0, 6.0])),
            (Variable("b", (2,), "float64"), np.array([7.0, 8.0]))]


def test_agree_is_told_once_after_the_last_assignment():
    from optstate_format import _journal
    ad, told = _Vars(), []
    assert _journal.apply(ad, _assignments(), agree=told.append) == 2
    assert told == [None]
    assert ad.log == [("assign", "a"), ("assign", "b")]
    assert ad.values["b"].tolist() == [7.0, 8.0]


def test_another_process_failing_rolls_this_one_back_and_raises_its_error():
    from optstate_format import _journal
    from optstate_format._errors import IntegrityError
    ad, told = _Vars(), []
    theirs = IntegrityError("process 1 of 2 failed (bad)", code="E_CHECKSUM")

    def agree(failure):
        told.append(failure)
        raise theirs
    with pytest.raises(IntegrityError) as e:
        _journal.apply(ad, _assignments(), agree=agree)
    assert e.value is theirs and told == [None]  # told once, not again with its own error
    assert ad.log == [("assign", "a"), ("assign", "b"), ("restore", "b"), ("restore", "a")]
    assert ad.values["a"].tolist() == [1.0, 2.0] and ad.values["b"].tolist() == [3.0, 4.0]
    with pytest.raises(_journal.OptStateError) as e:
        _journal.apply(_Vars(), _assignments(), agree=agree, rollback=False)
    assert (e.value.code, e.value.msg) == (
        "E_ASSIGN", "assigning a variable failed (IntegrityError: E_CHECKSUM: process 1 of 2 "
        "failed (bad)) after 2 of 2 assignments; rollback=False, so the optimizer is partly "
        "updated. Import again, or re-create the optimizer.")


def test_a_failure_here_is_told_to_the_others_before_rolling_back():
    from optstate_format import _journal
    ad, told = _Vars(fail="b"), []

    def agree(failure):
        told.append((failure, list(ad.log)))
        raise AssertionError("the others' raise is ignored: this failure is raised")
    with pytest.raises(_journal.OptStateError) as e:
        _journal.apply(ad, _assignments(), agree=agree)
    assert e.value.code == "E_ASSIGN" and e.value.msg == (
        "assigning a variable failed (RuntimeError: device lost); every variable already "
        "assigned was restored.")
    ((failure, log_then),) = told
    assert isinstance(failure, RuntimeError) and str(failure) == "device lost"
    assert log_then == [("assign", "a")]  # told before anything was restored
    assert ad.log == [("assign", "a"), ("restore", "b"), ("restore", "a")]
    assert ad.values["a"].tolist() == [1.0, 2.0]


# --- Lazy, Stored, Regions, box_of (spec 14.11) ---------------------------------------------

def test_lazy_of_an_archive_describes_reads_whole_once_and_counts_bytes(arc):
    from optstate_format import _io
    with _io.Lazy(arc) as lazy:
        assert lazy.ident == f"archive {_index(arc)['archive']['generation']}"
        st = lazy.state()
        m = st.weight("w").slots["m"]
        assert type(m) is _io.Stored and (m.key, m.shape, m.dtype, m.note) == (
            "slot:w:m", (4, 6), "float32", None)
        assert type(m.shape[0]) is int
        b = st.weight("b").slots["v"]
        assert (b.key, b.shape, b.dtype) == ("slot:b:v", (6,), "float64")
        assert lazy.bytes_read == 0 and lazy.whole == {}
        np.testing.assert_array_equal(np.asarray(m), V)
        assert lazy.bytes_read == 96 and list(lazy.whole) == ["slot:w:m"]
        np.testing.assert_array_equal(np.asarray(m), V)  # kept: not read again
        got = lazy.read({"slot:w:m": None, "slot:b:v": None})
        assert got["slot:w:m"] is lazy.whole["slot:w:m"] and lazy.bytes_read == 96 + 48
        np.testing.assert_array_equal(got["slot:b:v"], BM * 2)
        r = lazy.read({"slot:w:m": [((1, 1), (2, 2))]})["slot:w:m"]  # regions: read again
        np.testing.assert_array_equal(r.box((slice(1, 2), slice(1, 2))), V[1:2, 1:2])
        assert lazy.bytes_read == 96 + 48 + 32
    assert lazy.cont.dfd is None  # closed on leaving


def test_lazy_of_a_single_file_cuts_regions_from_whole_tensors(tmp_path):
    import optstate_format as osf
    from optstate_format import _io
    st = _state()
    st.weights[0].slots["m"] = V.copy()
    path = osf.write(st, tmp_path / "one.optstate")
    with pytest.raises(ZeroDivisionError):  # errors inside the block are not swallowed
        with _io.Lazy(path) as lazy:
            meta_crc = lazy.cont.metadata["optstate.header_crc32"]
            assert lazy.ident == f"file {meta_crc} {path.stat().st_size}"
            fd = lazy.cont.file.fd
            os.fstat(fd)
            out = lazy.read({"slot:w:m": [((0, 1), (4, 3)), ((2, 0), (3, 6))],
                             "slot:b:m": None})
            assert lazy.bytes_read == 96 + 48
            r = out["slot:w:m"]
            assert (type(r).__name__, r.shape, r.dtype) == ("Regions", (4, 6), "float32")
            assert list(r.boxes) == [((0, 1), (4, 3)), ((2, 0), (3, 6))]
            np.testing.assert_array_equal(r.boxes[((0, 1), (4, 3))], V[0:4, 1:3])
            np.testing.assert_array_equal(r.boxes[((2, 0), (3, 6))], V[2:3, 0:6])
            np.testing.assert_array_equal(out["slot:b:m"], BM)
            1 / 0
    with pytest.raises(OSError):  # closed on leaving
        os.fstat(fd)


def test_lazy_turns_a_foreign_error_into_ours(tmp_path):
    from optstate_format import _io
    with pytest.raises(FormatError) as e:
        _io.Lazy(tmp_path / "nothing.optstate")
    assert e.value.code == "E_IO" and "nothing.optstate" in e.value.msg


def test_box_of_bounds_and_steps():
    from optstate_format._state import box_of
    assert box_of((slice(None), slice(4, 8)), (3, 8)) == ((0, 4), (3, 8))
    assert box_of((), (2, 3)) == ((0, 0), (2, 3))
    assert box_of([slice(-2, None)], (5,)) == ((3,), (5,))
    assert box_of((slice(3, 1),), (5,)) == ((3,), (3,))  # empty: stop never below start
    assert box_of((slice(0, 99, 1),), (5,)) == ((0,), (5,))
    for step in (2, -1):
        with pytest.raises(ValueError) as e:
            box_of((slice(None, None, step), slice(None)), (4, 2))
        assert str(e.value) == ("a region is a box of step 1; received "
                                f"(slice(None, None, {step}), slice(None, None, None))")


def test_regions_give_views_of_boxes_they_hold_and_refuse_others():
    from optstate_format._state import Regions
    left = np.arange(8.0).reshape(2, 4)
    r = Regions((np.int64(2), 8), "float64", {((0, 0), (2, 4)): left,
                                               ((0, 6), (1, 8)): np.array([[9.0, 10.0]])})
    assert r.shape == (2, 8) and type(r.shape[0]) is int and r.dtype == "float64"
    assert r.box((slice(None), slice(0, 4))) is left
    sub = r.box((slice(1, 2), slice(1, 4)))
    assert sub.tolist() == [[5.0, 6.0, 7.0]] and np.shares_memory(sub, left)
    assert r.box((slice(0, 1), slice(7, 8))).tolist() == [[10.0]]
    assert r.box((slice(0, 2), slice(0, 1))).tolist() == [[0.0], [4.0]]
    for index, shown in (((slice(0, 2), slice(3, 5)), "[0, 3]..[2, 5]"),
                         ((slice(1, 2), slice(6, 8)), "[1, 6]..[2, 8]")):
        with pytest.raises(KeyError) as e:
            r.box(index)
        assert e.value.args == (f"the region {shown} of a [2, 8] tensor was not read in this "
                                "process",)
    with pytest.raises(TypeError) as e:
        np.asarray(r)
    assert str(e.value) == "Regions holds only some regions of a tensor; use box(index)"


# --- the collective import's options reach the plan and the journal -------------------------

@pytest.fixture
def split_archive(tmp_path):
    from fake_processes import run_processes
    from test_archive_collective_import import _written_state
    path = tmp_path / "run.optstate"
    assert run_processes(2, lambda p, procs: _archive.write_distributed(
        _written_state(p), path, max_shard_size=64, fsync=False, procs=procs)) == [path, path]
    return path


def test_a_collective_import_without_rollback_says_what_is_left(monkeypatch, split_archive):
    from test_archive_collective_import import SplitAdapter, _import_everywhere
    adapters = [SplitAdapter(0, fail=4), SplitAdapter(1)]
    errors = _import_everywhere(monkeypatch, split_archive, adapters, rollback=False)
    assert [(type(e).__name__, e.code) for e in errors] == [("OptStateError", "E_ASSIGN")] * 2
    assert errors[0].msg == (
        "assigning a variable failed (RuntimeError: device lost) after 3 of 5 assignments; "
        "rollback=False, so the optimizer is partly updated. Import again, or re-create the "
        "optimizer.")
    assert errors[1].msg.startswith(
        "assigning a variable failed (OptStateError: E_ASSIGN: process 0 of 2 failed "
        "(RuntimeError: device lost); rollback=False: every process keeps what it assigned.)")
    assert errors[1].msg.endswith(") after 5 of 5 assignments; rollback=False, so the optimizer "
                                  "is partly updated. Import again, or re-create the optimizer.")
    assert adapters[1].calls == 5 and adapters[0].calls == 4


def test_a_collective_import_forwards_strict_and_reports_bytes(monkeypatch, split_archive):
    from optstate_format.adapter import Variable
    from test_archive_collective_import import ALL_BYTES, KERNEL_M, SplitAdapter, \
        _import_everywhere
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    for ad in adapters:  # the target keeps a slot the file lacks: refused only when strict
        ad.opt.slots[1].slots["extra"] = Variable(("extra", "bias"), (8,), "float32")
        ad.values[("extra", "bias")] = np.zeros(8, np.float32)
    reports = _import_everywhere(monkeypatch, split_archive, adapters, strict=False)
    for rep in reports:
        assert rep.assigned == 5 and rep.bytes_read == ALL_BYTES - KERNEL_M.nbytes
        assert [p.code for p in rep.mismatched] == ["E_MATCH_SLOTS"]


def test_a_collective_import_of_a_missing_file_fails_in_every_process(monkeypatch, tmp_path):
    from test_archive_collective_import import SplitAdapter, _import_everywhere
    errors = _import_everywhere(monkeypatch, tmp_path / "none", [SplitAdapter(0),
                                                                 SplitAdapter(1)])
    assert [(type(e), e.code, e.msg) for e in errors] == [
        (FormatError, "E_IO", f"cannot open {str(tmp_path / 'none')!r}: No such file or "
                              "directory.")] * 2


def test_a_piece_named_as_a_tensor_stored_in_pieces_is_refused():
    """Regression (found reading _pieces_field for this run): spec 14.9 says a piece's shard
    key is unique in the archive "and not a tensor key"; the reader refused a piece named as
    a whole tensor or as another piece, but accepted one named as a tensor stored in pieces
    (its own, or one listed after it), which the reader then confused with that tensor."""
    d = _doc()
    PP(d, 1)["key"] = "slot:w:v"  # its own tensor's key
    assert _raised(_archive._archive_field, d) == (
        "E_DUPLICATE_KEY", "slot:w:v", "archive.pieces['slot:w:v'].parts[1]: the shard key "
        "'slot:w:v' is used twice in the archive.")
    d = _doc()
    PP(d, 0)["key"] = "slot:w:x"  # the key of a tensor in pieces listed after it
    A(d)["pieces"]["slot:w:x"] = {"dtype": "float32", "shape": [1], "parts": [
        {"file": "s2.safetensors", "key": "x0", "start": [0], "stop": [1], "crc32": 0}]}
    assert _raised(_archive._archive_field, d) == (
        "E_DUPLICATE_KEY", "slot:w:v", "archive.pieces['slot:w:v'].parts[0]: the shard key "
        "'slot:w:x' is used twice in the archive.")


# --- survivors of the first mutmut pass ----------------------------------------------------

def test_long_names_in_index_errors_are_cut():
    d = _doc()
    A(d)["generation"] = "g" * 50
    assert _raised(_archive._archive_field, d)[2] == (
        f"archive.generation {'g' * 40!r} must be 16 lowercase hex digits.")
    d = _doc()
    P(d)["dtype"] = "d" * 50
    assert _raised(_archive._archive_field, d)[2] == (
        f"archive.pieces['slot:w:v'].dtype {'d' * 40!r} is not a dtype of section 6.")
    d = _doc()
    PP(d, 0)["key"] = PP(d, 1)["key"] = "k" * 100
    assert _raised(_archive._archive_field, d)[2] == (
        f"archive.pieces['slot:w:v'].parts[1]: the shard key {'k' * 80!r} is used twice in the "
        "archive.")


def test_parts_in_any_order_touching_are_a_tiling_and_a_crc32_may_be_0():
    d = _doc()
    P(d)["parts"].reverse()  # the right half first: touching its left neighbour is no overlap
    PP(d, 0)["crc32"] = 0
    pieces = _archive._archive_field(d)[4]
    assert pieces["slot:w:v"][2] == [("s1.safetensors", "p1", [0, 2], [2, 4], 0),
                                     ("s2.safetensors", "p0", [0, 0], [2, 2], 5)]


def test_an_archive_path_that_is_a_file_or_a_dangling_link_index(tmp_path, arc):
    (tmp_path / "f").write_bytes(b"x" * 16)
    assert _opened(tmp_path / "f") == (
        "E_IO", None, f"cannot open the archive folder {str(tmp_path / 'f')!r}: Not a directory.")
    (arc / IDX).unlink()
    os.symlink(tmp_path / "nowhere", arc / IDX)
    assert _opened(arc) == ("E_ARCHIVE_LINK", None, f"the archive index: {str(arc / IDX)!r} is "
                            "a symbolic link; the files of an archive must be regular files in "
                            "its folder (a link could lead out of it). Replace the link by the "
                            "file.")


def test_members_are_opened_relative_to_the_folder_opened(tmp_path, arc, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _archive.Archive("a")  # a relative path
    np.testing.assert_array_equal(a.read_all(True)["slot:w:m"], V)
    os.rename(tmp_path / "a", tmp_path / "moved")  # read through the folder's descriptor
    np.testing.assert_array_equal(a.read_regions({"slot:b:v": None}, True)[0]["slot:b:v"],
                                  BM * 2)
    a.close()


def _member_error(folder, name, missing="it is missing."):
    with pytest.raises(FormatError) as e:
        _archive._Member(None, str(folder), name, missing)
    return e.value.code, e.value.msg


def test_member_open_errors_and_races(tmp_path, monkeypatch):
    (tmp_path / "real").write_bytes(b"12345678")
    os.symlink("real", tmp_path / "link")
    where = str(tmp_path / "link")
    assert _member_error(tmp_path, "link") == (
        "E_ARCHIVE_LINK", f"{where!r} is a symbolic link; the files of an archive must be "
        "regular files in its folder (a link could lead out of it). Replace the link by the file.")
    assert _member_error(tmp_path, "a\0b") == (
        "E_IO", f"cannot open {str(tmp_path / 'a') + chr(0) + 'b'!r}: embedded null byte.")
    real_stat, real_open = os.stat, os.open
    regular = real_stat(tmp_path / "real")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "stat", denied)
    assert _member_error(tmp_path, "real") == (
        "E_IO", f"cannot open {str(tmp_path / 'real')!r}: Permission denied.")
    # a link swapped in between the check and the open: O_NOFOLLOW refuses it
    monkeypatch.setattr(os, "stat", lambda *a, **k: regular)
    assert _member_error(tmp_path, "link") == (
        "E_ARCHIVE_LINK", f"{where!r} is a symbolic link; the files of an archive must be "
        "regular files in its folder.")
    assert _member_error(tmp_path, "gone", "it went.") == ("E_ARCHIVE_MISSING", "it went.")
    monkeypatch.setattr(os, "open", denied)
    assert _member_error(tmp_path, "real") == (
        "E_IO", f"cannot open {str(tmp_path / 'real')!r}: Permission denied.")
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(os, "stat", real_stat)
    m = _archive._Member(None, str(tmp_path), "real", "?")
    fd = m.fd
    assert m.size == 8 and m.path == str(tmp_path / "real")
    m.close()
    assert m.fd is None
    m.close()  # twice: nothing more to close
    with pytest.raises(OSError):
        os.fstat(fd)


def test_the_index_container_bounds(arc, monkeypatch):
    from optstate_format import _io
    index = (arc / IDX).read_bytes()
    n = int.from_bytes(index[:8], "little")
    (arc / IDX).write_bytes(b"\0" * 8)  # 8 bytes: an empty header, not a truncated file
    assert _opened(arc) == ("E_CONTAINER", None, "the archive index: not an optstate or "
                            "safetensors file: it does not begin with a safetensors header (an "
                            "8-byte little-endian length, then a JSON object).")
    (arc / IDX).write_bytes(b"\xff" * 8 + b" " * 8)
    assert _opened(arc) == ("E_HEADER_BOUNDS", None, "the archive index: its container header "
                            f"declares {2 ** 64 - 1} bytes; the file has 8 after the length "
                            "field (limit 104857600).")
    (arc / IDX).write_bytes(index[:8 + n])  # a header and no data: the document is not there
    code, key, msg = _opened(arc)
    assert (code, key) == ("E_TRUNCATED", HEADER_KEY) and msg.endswith(
        ", past the 0-byte data buffer: the file is truncated.")
    (arc / IDX).write_bytes(index)
    most = max(int.from_bytes(f.read_bytes()[:8], "little") for f in arc.iterdir())
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", most)  # the index's and the shards' limit
    assert _archive.Archive(arc).version == (1, 2)
    monkeypatch.setattr(_io, "MAX_JSON_HEADER", most - 1)
    assert _opened(arc)[0] == "E_HEADER_BOUNDS"


@pytest.mark.parametrize("code, replaced, calls", [
    ("E_ARCHIVE_MISSING", True, 4), ("E_ARCHIVE_MISMATCH", True, 4),
    ("E_ARCHIVE_MISSING", False, 1), ("E_SCHEMA", True, 1)])
def test_opening_and_reading_start_over_only_for_a_replaced_archive(arc, monkeypatch, code,
                                                                    replaced, calls):
    seen = []

    def load(self, shards):
        seen.append(shards)
        raise FormatError("gone", code=code)
    real_load = _archive.Archive._load
    monkeypatch.setattr(_archive.Archive, "_replaced", lambda self: replaced)
    monkeypatch.setattr(_archive.Archive, "_load", load)
    with pytest.raises(FormatError) as e:
        _archive.Archive(arc)
    assert e.value.code == code and seen == [True] * calls  # RETRIES = 3: 4 attempts
    monkeypatch.setattr(_archive.Archive, "_load", real_load)
    a = _archive.Archive(arc)
    monkeypatch.setattr(_archive.Archive, "_load", load)
    reads = []

    def read_all(self, verify, progress=None, keys=None):
        reads.append((verify, progress))
        raise FormatError("gone", code=code)
    monkeypatch.setattr(_archive.Archive, "_read_all", read_all)
    seen.clear()
    with pytest.raises(FormatError) as e:
        a.read_all(True, print)
    assert e.value.code == code
    assert reads == [(True, print)]
    assert seen == ([True] if calls > 1 else [])  # reloaded with its shards, then failed


def test_a_read_that_starts_over_returns_the_new_export(arc, monkeypatch):
    a = _archive.Archive(arc)
    old_gen = a.generation
    _write(arc, _state(V * 2))
    got = a.read_all(True)  # its shards were removed: the new index is read
    np.testing.assert_array_equal(got["slot:w:m"], V * 2)
    assert a.generation != old_gen and a.tensors["slot:w:m"] == ("float32", (4, 6), 0, 0)


def test_replaced_compares_the_index_itself_not_a_link(arc, tmp_path):
    a = _archive.Archive(arc)
    assert a._replaced() is False
    os.rename(arc / IDX, arc / "kept")
    os.symlink("kept", arc / IDX)  # a link to the very same file: still replaced
    assert a._replaced() is True
    os.unlink(arc / IDX)
    assert a._replaced() is False  # no index: not a replacement to read again
    os.rename(arc / "kept", arc / IDX)
    os.close(a.dfd)
    a.dfd = None  # the path-based branch
    assert a._replaced() is False
    raw = (arc / IDX).read_bytes()
    (arc / IDX).unlink()
    (arc / IDX).write_bytes(raw)
    assert a._replaced() is True


def test_regions_after_a_repeated_box_and_pieces_read_for_another_box(arc):
    a = _archive.Archive(arc)
    boxes = [((3, 3), (4, 6)), ((3, 3), (4, 6)), ((0, 0), (1, 1))]
    out, n = a.read_regions({"slot:w:m": boxes}, True)
    assert n == 64 and list(out["slot:w:m"].boxes) == [((3, 3), (4, 6)), ((0, 0), (1, 1))]
    np.testing.assert_array_equal(out["slot:w:m"].boxes[((0, 0), (1, 1))], V[:1, :1])
    np.testing.assert_array_equal(out["slot:w:m"].boxes[((3, 3), (4, 6))], V[3:4, 3:6])
    out, n = a.read_regions({"slot:w:m": [((0, 0), (1, 1)), ((3, 3), (4, 6))]}, True)
    np.testing.assert_array_equal(out["slot:w:m"].boxes[((3, 3), (4, 6))], V[3:4, 3:6])
    np.testing.assert_array_equal(out["slot:w:m"].boxes[((0, 0), (1, 1))], V[:1, :1])


def test_a_region_inside_a_box_held_at_an_offset():
    from optstate_format._state import Regions
    r = Regions((2, 9), "float64", {((0, 6), (2, 9)): np.arange(6.0).reshape(2, 3)})
    assert r.box((slice(0, 1), slice(6, 7))).tolist() == [[0.0]]
    assert r.box((slice(1, 2), slice(7, 8))).tolist() == [[4.0]]


def test_progress_and_the_keys_read_from_a_shard_of_several_tensors(tmp_path):
    a = _archive.Archive(_write(tmp_path / "one", size=10 ** 6))
    assert len(a.parts) == 1  # every tensor and piece in one shard
    seen = []
    got = a.read_all(True, seen.append)
    assert sum(seen) == 96 * 2 + 48 * 2 + 8
    np.testing.assert_array_equal(got["slot:b:v"], BM * 2)
    out, n = a.read_regions({"slot:b:v": None}, True)
    assert list(out) == ["slot:b:v"] and n == 48  # the shard's other tensors are not read


def test_two_shards_are_read_side_by_side(arc, monkeypatch):
    from optstate_format import _io
    monkeypatch.setattr(_io, "_PARALLEL_VERIFY_BYTES", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    seen, run = [], _io.run_jobs

    def spy(fn, items, parallel):
        seen.append((len(items), parallel))
        return run(fn, items, parallel)
    monkeypatch.setattr(_io, "run_jobs", spy)
    _archive.Archive(arc).read_regions({"slot:b:m": None, "slot:b:v": None}, True)
    assert seen[0] == (2, True)


def test_lazy_verifies_by_default_and_reads_only_the_keys_asked(arc, tmp_path):
    import optstate_format as osf
    from optstate_format import _io
    from optstate_format._errors import IntegrityError
    a = _archive.Archive(arc)
    part = a.parts[4]
    raw = bytearray((arc / part.name).read_bytes())
    raw[part.data_start + 1] ^= 0x40
    (arc / part.name).write_bytes(bytes(raw))
    with _io.Lazy(arc) as lazy:
        with pytest.raises(IntegrityError):
            lazy.read({"slot:w:m": [((0, 0), (1, 1))]})
        assert lazy.read({"slot:w:m": None}, verify=False)["slot:w:m"].shape == (4, 6)
    st = _state()
    st.weights[0].slots["m"] = V.copy()
    path = osf.write(st, tmp_path / "one.optstate")
    data = bytearray(path.read_bytes())
    with _io.Lazy(path) as lazy:
        start = lazy.cont.data_start + lazy.cont.tensors["slot:w:v"][2]
    data[start] ^= 0x40
    path.write_bytes(bytes(data))
    with _io.Lazy(path) as lazy:
        np.testing.assert_array_equal(lazy.read({"slot:w:m": None})["slot:w:m"], V)
        np.testing.assert_array_equal(lazy.read({"slot:b:m": None})["slot:b:m"], BM)
        assert lazy.bytes_read == 96 + 48  # counted across reads
        with pytest.raises(IntegrityError):
            lazy.read({"slot:w:v": None})
        assert lazy.read({"slot:w:v": None}, verify=False)["slot:w:v"][0, 0] != V[0, 0] + 1


def test_agree_says_by_default_that_nothing_was_assigned():
    from optstate_format import _api
    from optstate_format._errors import OptStateError
    told = {"class": "OptStateError", "code": "E_IO", "msg": "x", "key": None, "path": None}
    with pytest.raises(OptStateError) as e:
        _api._agree(_Procs([None, _row(error=told)]), "archive g", None)
    assert e.value.msg == "process 1 of 2 failed (x); no process assigned anything."


def test_apply_without_agree_assigns_everything():
    from optstate_format import _journal
    ad = _Vars()
    assert _journal.apply(ad, _assignments()) == 2
    assert ad.log == [("assign", "a"), ("assign", "b")]


def test_a_read_replaced_at_every_attempt_raises_after_the_last(arc, monkeypatch):
    a = _archive.Archive(arc)
    loads, reads = [], []

    def read_all(self, verify, progress=None, keys=None):
        reads.append(verify)
        raise FormatError("gone", code="E_ARCHIVE_MISSING")
    monkeypatch.setattr(_archive.Archive, "_read_all", read_all)
    monkeypatch.setattr(_archive.Archive, "_load", lambda self, shards: loads.append(shards))
    monkeypatch.setattr(_archive.Archive, "_replaced", lambda self: True)
    with pytest.raises(FormatError) as e:
        a.read_all(False)
    assert e.value.code == "E_ARCHIVE_MISSING"
    assert reads == [False] * 4 and loads == [True] * 3  # RETRIES = 3


def test_processes_that_opened_different_exports_refuse_before_assigning(monkeypatch,
                                                                          split_archive,
                                                                          tmp_path):
    from fake_processes import run_processes
    from test_archive_collective_import import SplitAdapter, _import_everywhere, _written_state
    other = tmp_path / "other.optstate"
    run_processes(2, lambda p, procs: _archive.write_distributed(
        _written_state(p), other, max_shard_size=64, fsync=False, procs=procs))
    adapters = [SplitAdapter(0), SplitAdapter(1)]
    errors = _import_everywhere(monkeypatch, None, adapters, paths=[split_archive, other])
    assert [e.code for e in errors] == ["E_ARCHIVE_MISMATCH"] * 2
    assert adapters[0].calls == adapters[1].calls == 0  # refused before the first assignment
