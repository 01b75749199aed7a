"""Generate the conformance vectors and the registry document from Python definitions.

    python spec/generate.py          # rewrite spec/conformance/ and spec/optimizers.md
    python spec/generate.py --check  # exit 1 if any committed file differs from what this makes

Valid vectors are written by the reference writer (so they are also golden bytes
of it); invalid vectors are valid files damaged in one precise way, each with the
error code a conforming reader must report.
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from optstate_format import _registry  # noqa: E402
from optstate_format._check import summarize  # noqa: E402
from optstate_format._io import read, write  # noqa: E402
from optstate_format._state import OptimizerInfo, OptimizerState, WeightEntry  # noqa: E402
from optstate_format._versions import CURRENT_VERSION  # noqa: E402

PRODUCER = {"framework": "conformance", "framework_version": "1"}


def _arr(shape, dtype="float32", seed=0):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n, dtype=np.float64).reshape(shape) * 0.25 + seed).astype(dtype)


def valid_states():
    """name -> OptimizerState. Each exercises one part of the format."""
    it = lambda n: np.array(n, np.int64)  # noqa: E731
    return {
        "minimal_sgd": OptimizerState(
            OptimizerInfo("sgd", "SGD", "keras.optimizers",
                          {"momentum": 0.9, "nesterov": False},
                          {"kind": "constant", "value": 0.01}),
            step=1, producer=PRODUCER,
            weights=[WeightEntry("dense/kernel", (2, 2), "float32",
                                 slots={"momentum": _arr((2, 2))},
                                 hints={"structural": None, "name": "dense/kernel"})],
            globals={"iterations": it(1)}),
        "adam_amsgrad": OptimizerState(
            OptimizerInfo("adam", "Adam", "keras.optimizers",
                          {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": True},
                          {"kind": "schedule", "class_name": "ExponentialDecay",
                           "config": {"initial_learning_rate": 0.001, "decay_steps": 100,
                                      "decay_rate": 0.5, "staircase": False}}),
            step=7, producer=PRODUCER,
            weights=[WeightEntry(f"branch_{b}/dense/{n}", s, "float32", slots={
                "m": _arr(s, seed=1 + b), "v": _arr(s, seed=2 + b), "v_hat": _arr(s, seed=3 + b)},
                hints={"structural": f"g:{b:032x}", "name": None})
                for b in (0, 1) for n, s in (("kernel", (3, 2)), ("bias", (2,)))],
            globals={"iterations": it(7)}),
        "adafactor_factored": OptimizerState(
            OptimizerInfo("adafactor", "Adafactor", "keras.optimizers",
                          {"beta_2_decay": -0.8, "epsilon_1": 1e-30, "epsilon_2": 1e-3},
                          {"kind": "constant", "value": 0.001}),
            step=2, producer=PRODUCER,
            weights=[
                WeightEntry("conv/kernel", (3, 4, 5), "float32", slots={
                    "r": _arr((3, 4)), "c": _arr((3, 5)), "v": _arr((3, 4, 5))}),
                WeightEntry("conv/bias", (5,), "float32", slots={
                    "r": np.array(0, np.int32), "c": np.array(0, np.int32),
                    "v": _arr((5,))}),
            ],
            globals={"iterations": it(2), "learning_rate": np.array(0.001, np.float32)}),
        "with_model_weights": OptimizerState(
            OptimizerInfo("rmsprop", "RMSprop", "tf_keras.optimizers.legacy",
                          {"rho": 0.9, "momentum": 0.0, "centered": True},
                          {"kind": "constant", "value": 0.001}),
            step=5, producer=PRODUCER, metadata={"run": "conformance"},
            weights=[
                WeightEntry("bn/gamma", (4,), "float32", value=_arr((4,), seed=9),
                            slots={"velocity": _arr((4,)), "average_gradient": _arr((4,))}),
                WeightEntry("bn/moving_mean", (4,), "float32", trainable=False,
                            value=_arr((4,), seed=5)),
                WeightEntry("embed/embeddings", (3, 2), "float16", value=_arr((3, 2), "float16"),
                            slots={"velocity": _arr((3, 2), "float16"),
                                   "average_gradient": _arr((3, 2), "float16")}),
            ],
            globals={"iterations": it(5)}),
        "multi_optimizer": OptimizerState(
            OptimizerInfo("multi", "MultiOptimizer", "keras.optimizers", {}, {}, components=[
                {"algorithm": "sgd", "class_name": "SGD", "module": "keras.optimizers",
                 "hyperparameters": {"momentum": 0.9}, "learning_rate": {
                     "kind": "constant", "value": 0.01}},
                {"algorithm": "adam", "class_name": "Adam", "module": "keras.optimizers",
                 "hyperparameters": {"amsgrad": False}, "learning_rate": {
                     "kind": "constant", "value": 0.001}}]),
            step=4, producer=PRODUCER,
            weights=[
                WeightEntry("encoder/kernel", (3, 2), "float32", component=0,
                            slots={"momentum": _arr((3, 2))}),
                WeightEntry("head/kernel", (2, 1), "float32", component=1,
                            slots={"m": _arr((2, 1)), "v": _arr((2, 1), seed=1)}),
            ],
            globals={"iterations": it(4), "component.0.iterations": it(4),
                     "component.1.iterations": it(4)}),
        "generic_custom_optimizer": OptimizerState(
            OptimizerInfo("generic:MyMomentum", "MyMomentum", "user.optimizers",
                          {"decay": 0.5}, {"kind": "constant", "value": 0.1}),
            step=3, producer=PRODUCER,
            weights=[WeightEntry("head/kernel", (2, 3), "float64",
                                 slots={"trace": _arr((2, 3), "float64"),
                                        "count": np.array(3, np.int64)})],
            globals={"iterations": it(3), "nan_and_inf": np.array(
                [np.nan, np.inf, -np.inf, 0.0], np.float32)}),
        # 1.1: both structural hints; a user layer whose two weights have generated names
        # (roles #0 and #1, spec 8.3), so their name hints are nil.
        "two_ended_roles": OptimizerState(
            OptimizerInfo("sgd", "SGD", "keras.optimizers", {"momentum": 0.9},
                          {"kind": "constant", "value": 0.01}),
            step=1, producer=PRODUCER,
            weights=[WeightEntry(f"scale_shift/{local}", (4,), "float32",
                                 slots={"momentum": _arr((4,), seed=i)},
                                 hints={"structural": out, "structural_in": inp, "name": None,
                                        "layer_class": "ScaleShift", "weight_name": local})
                     for i, (local, out, inp) in enumerate((
                         ("variable_7", "g:606bc246b7f95dcd90008cb660e9b06f",
                          "g:" + "1" * 32),
                         ("variable_8", "g:53976310ec1bcf94b1c9dcc3ee6443f3",
                          "g:" + "2" * 32)))],
            globals={"iterations": it(1)}),
    }


# --- crafting damaged files ----------------------------------------------------------

def _split(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(table, data: bytes) -> bytes:
    return _join_text(json.dumps(table, sort_keys=True, separators=(",", ":")), data)


def _join_text(text: str, data: bytes) -> bytes:
    body = text.encode()
    body += b" " * ((-(8 + len(body))) % 8)
    return struct.pack("<Q", len(body)) + body + data


def _rewrite_doc(raw: bytes, edit) -> bytes:
    """Decode the header document, apply ``edit``, re-store it with a fresh checksum."""
    table, data = _split(raw)
    s, e = table["optstate:header"]["data_offsets"]
    doc = msgpack.unpackb(data[s:e], raw=False)
    edit(doc)
    blob = msgpack.packb(doc, use_bin_type=True)
    return _replace_header_blob(table, data, blob)


def _replace_header_blob(table, data, blob):
    s, _ = table["optstate:header"]["data_offsets"]
    table["optstate:header"] = {"dtype": "U8", "shape": [len(blob)],
                                "data_offsets": [s, s + len(blob)]}
    table["__metadata__"]["optstate.header_crc32"] = f"{zlib.crc32(blob):08x}"
    return _join(table, data[:s] + blob)


def invalid_cases(base: bytes):
    """name -> (bytes, expected code, expected error class). ``base``: minimal_sgd bytes."""
    table, data = _split(base)
    cases = {}
    cases["truncated"] = (base[:len(base) - 10], "E_TRUNCATED", "FormatError")
    cases["header_length_past_eof"] = (struct.pack("<Q", len(base)) + base[8:],
                                       "E_HEADER_BOUNDS", "FormatError")
    cases["header_length_2_pow_60"] = (struct.pack("<Q", 2 ** 60) + base[8:],
                                       "E_HEADER_BOUNDS", "FormatError")
    key = "slot:dense/kernel:momentum"
    order = sorted((v["data_offsets"][0], k) for k, v in table.items() if k != "__metadata__")
    t = json.loads(json.dumps(table))
    second = order[1][1]
    t[second]["data_offsets"] = [o - 4 for o in t[second]["data_offsets"]]
    cases["overlapping_offsets"] = (_join(t, data), "E_OFFSETS", "FormatError")
    t = json.loads(json.dumps(table))
    first_end = t[order[0][1]]["data_offsets"][1]
    for _, k in order[1:]:
        t[k]["data_offsets"] = [o + 4 for o in t[k]["data_offsets"]]
    cases["gapped_offsets"] = (_join(t, data[:first_end] + b"\0" * 4 + data[first_end:]),
                               "E_OFFSETS", "FormatError")
    t = json.loads(json.dumps(table))
    del t["__metadata__"]["optstate.format"]
    cases["missing_format_metadata"] = (_join(t, data), "E_NOT_OPTSTATE", "FormatError")
    t = json.loads(json.dumps(table))
    t["__metadata__"]["optstate.version"] = "2.0"
    cases["unknown_major_version"] = (_join(t, data), "E_VERSION", "VersionError")
    s, e = table[key]["data_offsets"]
    flipped = bytearray(data)
    flipped[s + 3] ^= 0x10
    cases["checksum_mismatch"] = (_join(table, bytes(flipped)), "E_CHECKSUM",
                                  "IntegrityError")
    hs, he = table["optstate:header"]["data_offsets"]
    flipped = bytearray(data)
    flipped[hs + 20] ^= 0x01
    cases["header_checksum_mismatch"] = (_join(table, bytes(flipped)), "E_HEADER_CHECKSUM",
                                         "IntegrityError")

    def bad_shape(doc):
        doc["weights"][0]["shape"] = [2, 3]
    cases["slot_shape_inconsistent"] = (_rewrite_doc(base, bad_shape), "E_SLOT_SHAPE",
                                        "FormatError")

    def dup(doc):
        w = dict(doc["weights"][0])
        w["slots"] = {}
        doc["weights"].append(w)
    cases["duplicate_canonical_path"] = (_rewrite_doc(base, dup), "E_DUPLICATE_PATH",
                                         "FormatError")
    cases["undecodable_msgpack"] = (_replace_header_blob(
        json.loads(json.dumps(table)), data, b"\xc1\xc1\xc1\xc1"), "E_HEADER_DECODE",
        "FormatError")
    t = json.loads(json.dumps(table))
    t[key]["dtype"] = "F8_E4M3"
    t[key]["shape"] = [16]
    cases["unsupported_dtype"] = (_join(t, data), "E_DTYPE", "FormatError")

    def dangling(doc):
        doc["weights"][0]["slots"]["momentum"] = "slot:nowhere:momentum"
    cases["dangling_tensor_key"] = (_rewrite_doc(base, dangling), "E_DANGLING_KEY",
                                    "FormatError")

    def bad_path(doc):
        doc["weights"][0]["path"] = "dense/kernel:0"
    cases["path_with_colon_suffix"] = (_rewrite_doc(base, bad_path), "E_PATH", "FormatError")

    def no_step(doc):
        del doc["step"]
    cases["missing_required_field"] = (_rewrite_doc(base, no_step), "E_SCHEMA", "FormatError")
    cases["not_safetensors"] = (b"PK\x03\x04 this is a zip file, not optstate",
                                "E_HEADER_BOUNDS", "FormatError")
    cases["text_file"] = (b"# A README\n\nplain text, whose first 8 bytes read as a header "
                          b"length of 7 quintillion\n", "E_HEADER_BOUNDS", "FormatError")
    # --- container (spec 3) ---
    cases["trailing_byte"] = (_join(table, data + b"\0"), "E_OFFSETS", "FormatError")
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    entry = '"global:iterations":' + json.dumps(table["global:iterations"],
                                                separators=(",", ":"))
    cases["tensor_named_twice"] = (_join_text(text.replace(entry, entry + "," + entry), data),
                                   "E_DUPLICATE_KEY", "FormatError")
    t = json.loads(json.dumps(table))
    t["__metadata__"]["optstate.version"] = "2.0"
    t[key]["dtype"] = "F8_E4M3"
    t[key]["shape"] = [16]
    cases["fp8_in_version_2"] = (_join(t, data), "E_VERSION", "VersionError")
    t = json.loads(json.dumps(table))
    t["__metadata__"] = {"format": "pt"}
    t[key]["dtype"] = "F8_E4M3"
    t[key]["shape"] = [16]
    cases["plain_safetensors_fp8"] = (_join(t, data), "E_NOT_OPTSTATE", "FormatError")
    t = json.loads(json.dumps(table))
    t["global:iterations"]["shape"] = [0, 2 ** 40, 2 ** 40]
    s, e = t["global:iterations"]["data_offsets"]
    t["global:iterations"]["data_offsets"] = [s, s]
    cases["zero_elements_huge_dims"] = (_join(t, data), "E_LIMIT", "FormatError")
    # --- header document (spec 4) ---
    doc_blob = data[hs:he]
    cases["msgpack_repeated_key"] = (_replace_header_blob(
        json.loads(json.dumps(table)), data,
        bytes([doc_blob[0] + 1]) + doc_blob[1:] + msgpack.packb("step") + msgpack.packb(9)),
        "E_HEADER_FORM", "FormatError")

    def ext(doc):
        doc["optimizer"]["hyperparameters"]["when"] = msgpack.Timestamp(1, 0)
    cases["msgpack_ext_type"] = (_rewrite_doc(base, ext), "E_HEADER_FORM", "FormatError")

    def binary(doc):
        doc["optimizer"]["hyperparameters"]["blob"] = b"\x00\x01"
    cases["msgpack_bin_value"] = (_rewrite_doc(base, binary), "E_HEADER_FORM", "FormatError")

    def evil_lr(doc):
        doc["optimizer"]["learning_rate"] = {"kind": "evil"}
    cases["learning_rate_unknown_kind"] = (_rewrite_doc(base, evil_lr), "E_SCHEMA",
                                           "FormatError")

    def nfc(doc):
        w = dict(doc["weights"][0])
        doc["weights"][0]["path"] = "caf\u00e9/kernel"
        w["path"] = "cafe\u0301/kernel"
        w["slots"] = {}
        doc["weights"].append(w)
    cases["paths_equal_after_nfc"] = (_rewrite_doc(base, nfc), "E_DUPLICATE_PATH",
                                      "FormatError")

    def forget(doc):
        del doc["globals"]["iterations"]
    cases["unreferenced_tensor"] = (_rewrite_doc(base, forget), "E_UNREFERENCED",
                                    "FormatError")

    def twice(doc):
        doc["globals"]["again"] = "global:iterations"
    cases["tensor_referenced_twice"] = (_rewrite_doc(base, twice), "E_DUPLICATE_KEY",
                                        "FormatError")
    # --- data (spec 6) ---
    cases["bool_byte_2"] = (_bool_byte_2(), "E_BOOL_VALUE", "FormatError")
    return cases


def _bool_byte_2() -> bytes:
    """A valid file with a BOOL global, one of whose bytes is then 2 (checksum refreshed)."""
    state = valid_states()["minimal_sgd"]
    state.globals["flags"] = np.array([True, False, True])
    with tempfile.TemporaryDirectory() as d:
        raw = write(state, Path(d) / "b.optstate", fsync=False).read_bytes()
    table, data = _split(raw)
    s, e = table["global:flags"]["data_offsets"]
    data = data[:s] + b"\x01\x00\x02" + data[e:]

    def fix(doc):
        doc["checksums"]["global:flags"] = zlib.crc32(data[s:e])
    return _rewrite_doc(_join(table, data), fix)


def newer_minor(base: bytes) -> bytes:
    """A file of the next minor version with a field this version does not know: readers of
    this version must accept it."""
    table, data = _split(base)
    newer = f"{CURRENT_VERSION[0]}.{CURRENT_VERSION[1] + 1}"
    table["__metadata__"]["optstate.version"] = newer

    def edit(doc):
        doc["version"] = newer
        doc["future_field"] = {"added_in": newer}
    raw = _join(table, data)
    return _rewrite_doc(raw, edit)


def framework_tables():
    """Every converter's naming table (informative columns of optimizers.md)."""
    from optstate_format.converters import _keras_tables, _torch_tables
    return [_keras_tables.KERAS3, _keras_tables.TF_KERAS, _keras_tables.TF_KERAS_LEGACY,
            _torch_tables.TORCH]


def registry_markdown() -> str:
    tables = framework_tables()
    lines = [
        "# optstate optimizer registry (normative, format 1.0)",
        "",
        "Generated from `optstate_format/_registry.py` (normative: algorithms, canonical slot",
        "names, shape rules, meanings) and the converters' naming tables (informative: how each",
        "framework names them) by `spec/generate.py`; a test keeps the two identical. Section 7",
        "of SPEC.md defines how this table is used. Shape rules:",
        "",
        "| rule | slot shape for a weight of shape s |",
        "| --- | --- |",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in _registry.SHAPE_RULES.items()]
    lines += ["", "Framework tables (informative): " + "; ".join(
        f"`{t.framework}`: {t.title}" for t in tables) + ".", "", "## Algorithms", ""]
    for alg in _registry.ALGORITHMS.values():
        present = [t for t in tables if alg.id in t.classes]
        lines += [f"### `{alg.id}`: {alg.title}", "",
                  "Classes: " + (", ".join(f"{t.framework} `{t.classes[alg.id]}`"
                                           for t in present) or "none") + ".", ""]
        if alg.notes:
            lines += [f"Note: {alg.notes}", ""]
        lines += ["| slot | shape rule | meaning | present when | "
                  + " | ".join(f"{t.framework} name" for t in present) + " |",
                  "| --- | --- | --- | --- |" + " --- |" * len(present)]
        for s in alg.slots:
            names = [t.framework_name(alg.id, s.name) for t in present]
            lines.append(f"| `{s.name}` | `{s.rule}` | {s.meaning} | {s.optional or 'always'} | "
                         + " | ".join(f"`{n or '-'}`" for n in names) + " |")
        if alg.globals:
            lines += ["", "| global | meaning | " + " | ".join(
                f"{t.framework} name" for t in present) + " |",
                "| --- | --- |" + " --- |" * len(present)]
            for g in alg.globals:
                names = [next((k for k, v in t.global_names(alg.id).items() if v == g.name), None)
                         for t in present]
                lines.append(f"| `{g.name}` | {g.meaning} | "
                             + " | ".join(f"`{n or '-'}`" for n in names) + " |")
        lines.append("")
    common_tables = [t for t in tables if t.common_slots]
    lines += ["## Slots every algorithm may carry", "",
              "| slot | shape rule | meaning | present when | " + " | ".join(
                  f"{t.framework} name" for t in common_tables) + " |",
              "| --- | --- | --- | --- |" + " --- |" * len(common_tables)]
    for s in _registry.COMMON_SLOTS:
        names = [next((k for k, v in t.common_slots.items() if v == s.name), None)
                 for t in common_tables]
        lines.append(f"| `{s.name}` | `{s.rule}` | {s.meaning} | {s.optional} | "
                     + " | ".join(f"`{n or '-'}`" for n in names) + " |")
    lines += ["", "## Globals every algorithm may carry", "", "| global | meaning |",
              "| --- | --- |"]
    lines += [f"| `{n}` | {m} |" for n, m in _registry.COMMON_GLOBALS]
    lines += ["", "## Generic form", "",
              "An optimizer not in this registry is written with algorithm "
              f"`{_registry.GENERIC_PREFIX}<ClassName>`. Its slots are named by the framework's",
              "own attribute names with leading underscores removed, and use shape rule `any`.",
              "A consumer imports generic state only into an optimizer of the same class name.",
              ""]
    return "\n".join(lines)


def build(out: Path):
    """Write every generated file below ``out`` (a spec/ folder layout)."""
    valid = out / "conformance" / "valid"
    invalid = out / "conformance" / "invalid"
    valid.mkdir(parents=True, exist_ok=True)
    invalid.mkdir(parents=True, exist_ok=True)
    for name, state in valid_states().items():
        path = write(state, valid / f"{name}.optstate", fsync=False)
        summary = summarize(read(path))
        (valid / f"{name}.expected.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True) + "\n")
    base = (valid / "minimal_sgd.optstate").read_bytes()
    raw = newer_minor(base)
    (valid / "newer_minor_version.optstate").write_bytes(raw)
    tmp = valid / "newer_minor_version.optstate"
    (valid / "newer_minor_version.expected.json").write_text(
        json.dumps(summarize(read(tmp)), indent=2, sort_keys=True) + "\n")
    for name, (raw, code, cls) in invalid_cases(base).items():
        (invalid / f"{name}.optstate").write_bytes(raw)
        (invalid / f"{name}.expected.json").write_text(
            json.dumps({"code": code, "error": cls}, indent=2, sort_keys=True) + "\n")
    (out / "optimizers.md").write_text(registry_markdown())
    from archive_vectors import build_archives  # sharded archives (spec 14)
    build_archives(out)


def _files(root: Path):
    names = [p for p in (root / "conformance").rglob("*") if p.is_file()]
    names.append(root / "optimizers.md")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in names if p.exists()}


def main(argv):
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as d:
            build(Path(d))
            fresh, committed = _files(Path(d)), _files(HERE)
        stale = sorted(k for k in set(fresh) | set(committed)
                       if fresh.get(k) != committed.get(k))
        for k in stale:
            print(f"stale: spec/{k}")
        print("generated files are current" if not stale else
              "run: python spec/generate.py")
        return 1 if stale else 0
    build(HERE)
    print("wrote spec/conformance/ and spec/optimizers.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
