"""Conformance vectors for sharded archives (spec section 14).

Called by ``spec/generate.py`` (so ``python spec/generate.py --check`` checks them too);
writes ``conformance/archives/{valid,invalid}/<name>.optstate/`` folders, each with a
``<name>.expected.json`` beside it. Valid archives are written by the reference writer with
fixed generations, so their bytes are reproducible; invalid ones are valid archives damaged
in one precise way, each with the code a conforming reader reports.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optstate_format import _archive  # noqa: E402
from optstate_format._check import summarize  # noqa: E402
from optstate_format._io import read, read_header  # noqa: E402
from optstate_format._state import OptimizerInfo, OptimizerState, WeightEntry  # noqa: E402

PRODUCER = {"framework": "conformance", "framework_version": "1"}
GEN = "5a17c0de00000001"
OTHER_GEN = "5a17c0de00000002"


def _arr(shape, seed=0, dtype="float32"):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n, dtype=np.float64).reshape(shape) * 0.25 + seed).astype(dtype)


def _adam(seed=0, with_values=False):
    weights = [WeightEntry(f"block_{i}/dense/{n}", s, "float32", slots={
        "m": _arr(s, seed + i), "v": _arr(s, seed + i + 0.5)},
        value=_arr(s, seed - i) if with_values else None,
        hints={"structural": f"g:{i:032x}", "name": None})
        for i in range(3) for n, s in (("kernel", (4, 3)), ("bias", (3,)))]
    return OptimizerState(
        OptimizerInfo("adam", "Adam", "keras.optimizers", {"beta_1": 0.9, "beta_2": 0.999},
                      {"kind": "constant", "value": 0.001}),
        step=3 + seed, producer=PRODUCER, weights=weights,
        globals={"iterations": np.array(3 + seed, np.int64)})


def _big_and_small():
    return OptimizerState(
        OptimizerInfo("sgd", "SGD", "keras.optimizers", {"momentum": 0.9, "nesterov": False},
                      {"kind": "constant", "value": 0.01}),
        step=1, producer=PRODUCER, weights=[
            WeightEntry("embedding/embeddings", (32, 16), "float32",
                        slots={"momentum": _arr((32, 16))}),
            WeightEntry("head/bias", (2,), "float32", slots={"momentum": _arr((2,), 1)}),
            WeightEntry("head/kernel", (16, 2), "float16",
                        slots={"momentum": _arr((16, 2), 2, "float16")})],
        globals={"iterations": np.array(1, np.int64)})


class _Piece:
    """A device's part of an array, as JAX describes it (index, replica_id, data)."""

    def __init__(self, index, data):
        self.index, self.replica_id, self.data = index, 0, data


class _Split:
    """An array spread over devices: the writer stores each part as a piece (14.9)."""

    is_fully_addressable = False

    def __init__(self, full, rows, cols):
        self.addressable_shards = [
            _Piece((slice(a, b), slice(c, d)), full[a:b, c:d])
            for a, b in zip(rows, rows[1:]) for c, d in zip(cols, cols[1:])]


class _OneProcess:
    index, count = 0, 1

    def broadcast(self, text):
        return text

    def gather(self, text):
        return [text]


def _split(full, rows, cols):
    def fetch():
        raise AssertionError("a tensor in pieces is never fetched whole")
    return _archive.Sourced(full.shape, str(full.dtype), fetch,
                            type("Handle", (), {"value": _Split(full, rows, cols)})())


def _pieces():
    """An SGD state whose kernel's momentum is stored as two column halves and whose
    embedding's as a 2 x 2 grid of unequal boxes; the bias is stored whole."""
    kernel, emb, bias = _arr((4, 8), 1), _arr((6, 4), 2), _arr((8,), 3)
    return OptimizerState(
        OptimizerInfo("sgd", "SGD", "keras.optimizers", {"momentum": 0.9, "nesterov": False},
                      {"kind": "constant", "value": 0.01}),
        step=2, producer=PRODUCER, weights=[
            WeightEntry("dense/kernel", (4, 8), "float32",
                        slots={"momentum": _split(kernel, [0, 4], [0, 4, 8])}),
            WeightEntry("dense/bias", (8,), "float32", slots={"momentum": bias}),
            WeightEntry("embedding/embeddings", (6, 4), "float32",
                        slots={"momentum": _split(emb, [0, 2, 6], [0, 1, 4])})],
        globals={"iterations": np.array(2, np.int64)})


def _write_pieces(path, size=64):
    return _archive.write_distributed(_pieces(), path, max_shard_size=size, fsync=False,
                                      procs=_OneProcess(), _generation=GEN)


def valid_archives():
    """name -> (state, max_shard_size, extra files {name: bytes})."""
    return {
        "several_shards": (_adam(), 120, {}),
        "tensor_larger_than_shard": (_big_and_small(), 256, {}),
        "one_shard_with_weights": (_adam(with_values=True), 1 << 20, {}),
        "unknown_files_ignored": (_adam(), 200, {
            "README.txt": b"files the index does not name are ignored (spec 14.1)\n",
            _archive.shard_name(OTHER_GEN, 1, 1): b"an orphan of an interrupted export\n"}),
    }


def _write(state, path, size, gen=GEN):
    return _archive.write_archive(state, path, max_shard_size=size, fsync=False,
                                  _generation=gen)


def _edit_index(path: Path, edit):
    arch = _archive.Archive(path, shards=False)
    arch.close()
    doc = arch.doc
    edit(doc)
    tmp = _archive._write_temp(path, _archive.INDEX_NAME, 0o644, False,
                               _archive._fill_index(doc))
    os.replace(tmp, path / _archive.INDEX_NAME)


def _shards(path: Path):
    return sorted(n for n in os.listdir(path) if n.startswith("shard-"))


def _rename_shard(path: Path, old: str, new: str):
    def edit(doc):
        files = doc["archive"]["files"]
        files[new] = files.pop(old)
        doc["archive"]["shards"] = {k: new if v == old else v
                                    for k, v in doc["archive"]["shards"].items()}
    _edit_index(path, edit)


def _flip_tensor_byte(path: Path):
    name = _shards(path)[0]
    f = _archive._Member(None, str(path), name, "?")
    part = _archive._Part(f, _archive.SHARD_FORMAT)
    key = sorted(k for k in part.tensors if k != "optstate:header")[-1]
    raw = bytearray((path / name).read_bytes())
    raw[part.data_start + part.tensors[key][2]] ^= 0x01
    (path / name).write_bytes(bytes(raw))


def invalid_archives():
    """name -> (damage(folder, invalid_dir), expected code, error class)."""
    def missing(p, _):
        (p / _shards(p)[1]).unlink()

    def truncated(p, _):
        name = _shards(p)[0]
        (p / name).write_bytes((p / name).read_bytes()[:-5])

    def other_generation(p, _):
        other = p.parent / ".other"
        _write(_adam(seed=7), other, 120, gen=GEN)
        _write(_adam(seed=7), other, 120, gen=OTHER_GEN)
        name = _shards(p)[2]
        src = other / _shards(other)[2]
        shutil.copyfile(src, p / name)
        shutil.rmtree(other)

    def name_dotdot(p, _):
        _rename_shard(p, _shards(p)[0], "../escape.safetensors")

    def name_absolute(p, _):
        _rename_shard(p, _shards(p)[0], "/etc/passwd")

    def name_subfolder(p, _):
        old = _shards(p)[0]
        (p / "sub").mkdir()
        os.rename(p / old, p / "sub" / old)
        _rename_shard(p, old, f"sub/{old}")

    def symlink(p, inv):
        name = _shards(p)[1]
        os.rename(p / name, inv / "outside-shard.bin")
        os.symlink("../outside-shard.bin", p / name)

    def no_index(p, _):
        (p / _archive.INDEX_NAME).unlink()

    def crc_disagrees(p, _):
        _edit_index(p, lambda d: d["checksums"].update(
            {"slot:block_0/dense/kernel:m": 12345}))

    return {
        "missing_shard": (missing, "E_ARCHIVE_MISSING", "FormatError"),
        "damaged_shard": (lambda p, _: _flip_tensor_byte(p), "E_CHECKSUM", "IntegrityError"),
        "truncated_shard": (truncated, "E_TRUNCATED", "FormatError"),
        "shard_of_another_generation": (other_generation, "E_ARCHIVE_MISMATCH", "FormatError"),
        "index_crc_disagrees_with_shard": (crc_disagrees, "E_ARCHIVE_MISMATCH", "FormatError"),
        "shard_name_dotdot": (name_dotdot, "E_ARCHIVE_NAME", "FormatError"),
        "shard_name_absolute": (name_absolute, "E_ARCHIVE_NAME", "FormatError"),
        "shard_name_subfolder": (name_subfolder, "E_ARCHIVE_NAME", "FormatError"),
        "shard_is_a_symlink": (symlink, "E_ARCHIVE_LINK", "FormatError"),
        "folder_without_index": (no_index, "E_NOT_FILE", "FormatError"),
    }


def invalid_pieces():
    """name -> (damage(folder), expected code, error class), on the archive of _pieces()."""
    emb = "slot:embedding/embeddings:momentum"

    def parts(doc, key=emb):
        return doc["archive"]["pieces"][key]["parts"]

    def overlap(d):
        parts(d)[1]["start"] = [0, 0]  # (0,1)-(2,4) becomes (0,0)-(2,4): meets (0,0)-(2,1)

    def uncovered(d):
        del parts(d)[3]  # one box of the grid left out: the rest covers 12 of 24 elements

    def out_of_bounds(d):
        parts(d)[3]["stop"] = [7, 4]  # past the 6 rows

    def combined_crc(d):
        d["checksums"][emb] ^= 1  # not the crc32 of the pieces in the listed order

    def swapped_keys(d):  # the index puts a 2x1 piece where the shard holds a 2x3 one
        a, b = parts(d)[0], parts(d)[1]
        a["key"], b["key"], a["crc32"], b["crc32"] = b["key"], a["key"], b["crc32"], a["crc32"]
        # every checksum consistent, so that only the shapes disagree
        d["checksums"][emb] = _archive._combined_crc("float32", [
            (q["file"], q["key"], q["start"], q["stop"], q["crc32"]) for q in parts(d)])

    def damaged(p):
        doc = read_header(p)
        part = parts(doc)[2]
        f = _archive._Member(None, str(p), part["file"], "?")
        shard = _archive._Part(f, _archive.SHARD_FORMAT)
        raw = bytearray((p / part["file"]).read_bytes())
        raw[shard.data_start + shard.tensors[part["key"]][2] + 1] ^= 0x08
        (p / part["file"]).write_bytes(bytes(raw))

    def edit(fn):
        return lambda p: _edit_index(p, fn)
    return {
        "pieces_overlap": (edit(overlap), "E_ARCHIVE_PIECES", "FormatError"),
        "pieces_do_not_cover": (edit(uncovered), "E_ARCHIVE_PIECES", "FormatError"),
        "piece_out_of_bounds": (edit(out_of_bounds), "E_SCHEMA", "FormatError"),
        "pieces_checksum_disagrees": (edit(combined_crc), "E_ARCHIVE_MISMATCH", "FormatError"),
        "piece_shape_disagrees_with_shard": (edit(swapped_keys), "E_ARCHIVE_MISMATCH",
                                             "FormatError"),
        "damaged_piece": (damaged, "E_CHECKSUM", "IntegrityError"),
    }


def build_archives(out: Path):
    """Write every archive vector below ``out`` (a spec/ folder layout)."""
    root = out / "conformance" / "archives"
    shutil.rmtree(root, ignore_errors=True)
    valid, invalid = root / "valid", root / "invalid"
    valid.mkdir(parents=True)
    invalid.mkdir(parents=True)
    for name, (state, size, extra) in valid_archives().items():
        path = _write(state, valid / f"{name}.optstate", size)
        for fname, data in extra.items():
            (path / fname).write_bytes(data)
        (valid / f"{name}.expected.json").write_text(
            json.dumps(summarize(read(path)), indent=2, sort_keys=True) + "\n")
    path = _write_pieces(valid / "tensors_in_pieces.optstate")
    (valid / "tensors_in_pieces.expected.json").write_text(
        json.dumps(summarize(read(path)), indent=2, sort_keys=True) + "\n")
    for name, (damage, code, cls) in invalid_archives().items():
        path = _write(_adam(), invalid / f"{name}.optstate", 120)
        damage(path, invalid)
        (invalid / f"{name}.expected.json").write_text(
            json.dumps({"code": code, "error": cls}, indent=2, sort_keys=True) + "\n")
    for name, (damage, code, cls) in invalid_pieces().items():
        damage(_write_pieces(invalid / f"{name}.optstate"))
        (invalid / f"{name}.expected.json").write_text(
            json.dumps({"code": code, "error": cls}, indent=2, sort_keys=True) + "\n")
