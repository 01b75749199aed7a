"""Mutation-strength tests of the archive reader (spec 14.3-14.9) and the import made by
every process of a job (spec 14.11): each index field broken alone, with its exact error
(class, code, tensor key, message); each shard check against the index; the regions read
and the bytes counted; what the processes tell each other. Framework-free and fast; written
against the survivors of the mutmut run of docs/mutation.md (2026-11-29, branch mutarch)."""

import copy
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
     ('E_SCHEMA', None,
      'header.archive must be dict, got NoneType.')),
    ('archive a list', lambda d: d.update(archive=[]),
     ('E_SCHEMA', None,
      'header.archive must be dict, got list.')),
    ('generation missing', lambda d: A(d).pop("generation"),
     ('E_SCHEMA', None,
      'archive.generation must be str, got NoneType.')),
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
     ('E_SCHEMA', None,
      'archive.files must be dict, got list.')),
    ('file name with a separator', lambda d: F(d).update({"../s3.safetensors": dict(REC)}),
     _name_error('archive.files', '../s3.safetensors')),
    ('file name is the index', lambda d: F(d).update({IDX: dict(REC)}),
     _name_error('archive.files', 'optstate-index.safetensors')),
    ('file name not a str', lambda d: F(d).update({7: dict(REC)}),
     _name_error('archive.files', '7')),
    ('file name of 256', lambda d: F(d).update({"a" * 256: dict(REC)}),
     _name_error('archive.files', "a" * 80)),
    ('file record a list', lambda d: F(d).update({"s2.safetensors": []}),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'] must be dict, got list.")),
    ('file size a bool', lambda d: F(d)["s2.safetensors"].update(size=True),
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'].size must be int, got bool.")),
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
     ('E_SCHEMA', None,
      "archive.files['s2.safetensors'].header_crc32 must be str, got int.")),
    ('shards a list', lambda d: A(d).update(shards=[]),
     ('E_SCHEMA', None,
      'archive.shards must be dict, got list.')),
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
     ('E_SCHEMA', None,
      'archive.pieces must be dict, got list.')),
    ('piece record a list', lambda d: A(d)["pieces"].update({"slot:w:v": []}),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'] must be dict, got list.")),
    ('piece also whole', lambda d: A(d)["pieces"].update({"slot:w:m": P(d)}),
     ('E_SCHEMA', 'slot:w:m',
      "archive.pieces['slot:w:m']: the tensor is also stored whole (or is the document).")),
    ('piece is the document', lambda d: A(d)["pieces"].update({HEADER_KEY: P(d)}),
     ('E_SCHEMA', 'optstate:header',
      "archive.pieces['optstate:header']: the tensor is also stored whole (or is the document).")),
    ('piece dtype missing', lambda d: P(d).pop("dtype"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].dtype must be str, got NoneType.")),
    ('piece dtype unknown', lambda d: P(d).update(dtype="float99"),
     ('E_DTYPE', 'slot:w:v',
      "archive.pieces['slot:w:v'].dtype 'float99' is not a dtype of section 6.")),
    ('piece shape a tuple', lambda d: P(d).update(shape=(2, 4)),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].shape must be list, got tuple.")),
    ('piece shape negative', lambda d: P(d).update(shape=[2, -4]),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'].shape: shape [2, -4] holds something other than integers >= "
      '0.')),
    ('parts missing', lambda d: P(d).pop("parts"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts must be list, got NoneType.")),
    ('parts empty', lambda d: P(d).update(parts=[]),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'] has 0 parts; 1 to 4096 are allowed.")),
    ('part a list', lambda d: P(d)["parts"].__setitem__(0, []),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0] must be dict, got list.")),
    ('part file missing', lambda d: PP(d, 0).pop("file"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0].file must be str, got NoneType.")),
    ('part file named badly', lambda d: PP(d, 0).update(file="a/b"),
     _name_error("archive.pieces['slot:w:v'].parts[0].file", 'a/b')),
    ('part file not listed', lambda d: PP(d, 0).update(file="s9.safetensors"),
     ('E_SCHEMA', 'slot:w:v',
      "archive.pieces['slot:w:v'].parts[0] names 's9.safetensors', which archive.files does "
      'not list.')),
    ('part key missing', lambda d: PP(d, 0).pop("key"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0].key must be str, got NoneType.")),
    ('part start missing', lambda d: PP(d, 0).pop("start"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0].start must be list, got NoneType.")),
    ('part stop missing', lambda d: PP(d, 0).pop("stop"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0].stop must be list, got NoneType.")),
    ('part crc missing', lambda d: PP(d, 0).pop("crc32"),
     ('E_SCHEMA', None,
      "archive.pieces['slot:w:v'].parts[0].crc32 must be int, got NoneType.")),
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
