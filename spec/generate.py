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
from optstate_format._check import summary  # noqa: E402
from optstate_format._io import read, write  # noqa: E402
from optstate_format._state import OptimizerInfo, OptimizerState, WeightEntry  # noqa: E402
from optstate_format._versions import CURRENT_VERSION  # noqa: E402

PRODUCER = {"framework": "conformance", "framework_version": "1"}


def _bfloat16():
    import ml_dtypes  # the generator needs it; readers of the vector do not
    return ml_dtypes.bfloat16


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
        # The summary's value forms (spec 13.1): non-finite floats, bool, uint64 beyond 2^63,
        # bfloat16, a float32 that is not a short decimal, a one-element array (no value).
        "summary_values": OptimizerState(
            OptimizerInfo("sgd", "SGD", "keras.optimizers",
                          {"momentum": 0.0, "clipvalue": float("nan"), "seed": 2 ** 64 - 1,
                           "nesterov": False, "name": None},
                          {"kind": "constant", "value": 0.1}),
            step=2 ** 40, producer=PRODUCER,
            weights=[WeightEntry("dense/bias", (2,), "bfloat16", slots={})],
            globals={"nan": np.array(np.nan, np.float32), "inf": np.array(np.inf),
                     "minus_inf": np.array(-np.inf, np.float16),
                     "flag": np.array(True), "big": np.array(2 ** 64 - 1, np.uint64),
                     "half": np.array(1.5, _bfloat16()), "tenth": np.array(0.1, np.float32),
                     "one_element": np.array([7], np.int32)}),
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


def invalid_cases(base: bytes, others=None):
    """name -> (bytes, expected code, expected error class). ``base``: minimal_sgd bytes;
    ``others``: the other valid vectors' bytes by name."""
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
    # --- the tensor table attested by the header document (spec 3.6) ---
    t = json.loads(json.dumps(table))
    t[key]["dtype"] = "I32"  # same item size: offsets, tiling and checksums still agree
    cases["table_dtype_f32_to_i32"] = (_join(t, data), "E_TABLE_CHECKSUM", "IntegrityError")
    t = json.loads(json.dumps(table))
    t[key]["shape"] = [4]  # [2, 2] -> [4]: the same 16 bytes (else E_SLOT_SHAPE, later)
    cases["table_shape_same_bytes"] = (_join(t, data), "E_TABLE_CHECKSUM", "IntegrityError")

    def no_table_crc(doc):
        del doc["table_crc32"]
    cases["table_crc32_missing"] = (_rewrite_doc(base, no_table_crc), "E_SCHEMA",
                                    "FormatError")
    # --- data (spec 6) ---
    cases["bool_byte_2"] = (_bool_byte_2(), "E_BOOL_VALUE", "FormatError")
    cases.update(_one_per_must(base, others or {}))
    return cases


def _doc_case(base, code, edit, cls="FormatError"):
    return _rewrite_doc(base, edit), code, cls


def _table_case(base, code, edit, cls="FormatError"):
    table, data = _split(base)
    edit(table)
    return _join(table, data), code, cls


def _text_case(base, code, edit, cls="FormatError", pad=b" "):
    """The container header's JSON text edited as bytes, then padded with ``pad``."""
    table, data = _split(base)
    body = edit(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    body += pad * ((-(8 + len(body))) % 8 or 8)
    return struct.pack("<Q", len(body)) + body + data, code, cls


def _set(*keys, value):
    def edit(obj):
        for k in keys[:-1]:
            obj = obj[k]
        obj[keys[-1]] = value
    return edit


def _drop(*keys):
    def edit(obj):
        for k in keys[:-1]:
            obj = obj[k]
        del obj[keys[-1]]
    return edit


def _rename(where, old, new):
    def edit(doc):
        mapping = doc[where] if where == "globals" else doc["weights"][0]["slots"]
        mapping[new] = mapping.pop(old)
    return edit


def _one_per_must(base: bytes, others: dict):
    """Issue 14 points 4 and 10: one vector per MUST, each breaking that rule alone, so the
    normative order of spec 3.5 gives it a single right code."""
    key = "slot:dense/kernel:momentum"
    table, data = _split(base)
    hs, he = table["optstate:header"]["data_offsets"]
    blob = data[hs:he]
    c = {}
    # 3.5 step 1: the length field
    c["file_of_7_bytes"] = (base[:7], "E_TRUNCATED", "FormatError")
    # step 2: the container header's form (3.1, 3.2)
    c["container_not_utf8"] = _text_case(base, "E_CONTAINER", lambda b: b.replace(
        b'"optstate.format":"optstate"', b'"optstate.format":"optstate\xff"'))
    c["container_padded_with_nul"] = _text_case(base, "E_CONTAINER", lambda b: b, pad=b"\0")
    c["metadata_key_repeated"] = _text_case(base, "E_CONTAINER", lambda b: b.replace(
        b'"optstate.format":"optstate",', b'"optstate.format":"optstate",' * 2))
    c["tensor_entry_extra_member"] = _table_case(
        base, "E_CONTAINER", _set("global:iterations", "extra", value=1))
    # step 3: format and version (3.3, 10)
    c["format_metadata_wrong"] = _table_case(
        base, "E_NOT_OPTSTATE", _set("__metadata__", "optstate.format", value="optstate2"))
    c["version_metadata_missing"] = _table_case(
        base, "E_VERSION", _drop("__metadata__", "optstate.version"), "VersionError")
    c["version_leading_zero"] = _table_case(
        base, "E_VERSION", _set("__metadata__", "optstate.version", value="01.1"),
        "VersionError")
    c["version_three_parts"] = _table_case(
        base, "E_VERSION", _set("__metadata__", "optstate.version", value="1.1.0"),
        "VersionError")
    # step 4: each tensor (3.1, 3.2, 9.3)
    c["shape_rank_65"] = _table_case(base, "E_LIMIT", _set("global:iterations", "shape",
                                                           value=[1] * 65))
    c["offsets_disagree_with_shape"] = _table_case(base, "E_OFFSETS", _set(
        "global:iterations", "shape", value=[2]))
    # step 5: the header tensor and its checksum (3.3, 3.4)
    c["header_tensor_missing"] = _table_case(
        base, "E_NOT_OPTSTATE", _set("__metadata__", "optstate.header", value="optstate:other"))
    c["header_tensor_not_u8"] = _table_case(base, "E_CONTAINER", _set(
        "optstate:header", "dtype", value="I8"))
    c["header_tensor_rank_2"] = _table_case(base, "E_CONTAINER", _set(
        "optstate:header", "shape", value=[1, he - hs]))
    c["header_crc32_missing"] = _table_case(
        base, "E_CONTAINER", _drop("__metadata__", "optstate.header_crc32"))
    c["header_crc32_uppercase"] = _table_case(base, "E_CONTAINER", _set(
        "__metadata__", "optstate.header_crc32",
        value=table["__metadata__"]["optstate.header_crc32"].upper()))
    c["header_crc32_not_hex"] = _table_case(base, "E_CONTAINER", _set(
        "__metadata__", "optstate.header_crc32", value="0x1234ab"))
    # step 6: the document's msgpack (4)
    t = json.loads(json.dumps(table))
    c["msgpack_bytes_after_map"] = (_replace_header_blob(t, data, blob + b"\xc0"),
                                    "E_HEADER_FORM", "FormatError")
    c["msgpack_int_key"] = _doc_case(base, "E_HEADER_FORM", _set(
        "optimizer", "hyperparameters", 7, value=1))
    deep = {}
    for _ in range(40):
        deep = {"x": deep}
    c["msgpack_nested_40_levels"] = _doc_case(base, "E_LIMIT", _set(
        "optimizer", "hyperparameters", "deep", value=deep))
    t = json.loads(json.dumps(table))
    c["document_not_a_map"] = (_replace_header_blob(t, data, msgpack.packb([1, 2])),
                               "E_SCHEMA", "FormatError")
    # step 6: the document's fields (4, 4.1, 4.2, 5, 7.6)
    c["header_format_differs"] = _doc_case(base, "E_SCHEMA", _set("format", value="optstat"))
    c["header_version_differs"] = _doc_case(base, "E_SCHEMA", _set("version", value="1.0"))
    c["step_bool"] = _doc_case(base, "E_SCHEMA", _set("step", value=True))
    c["step_float"] = _doc_case(base, "E_SCHEMA", _set("step", value=1.0))
    c["learning_rate_constant_without_value"] = _doc_case(base, "E_SCHEMA", _set(
        "optimizer", "learning_rate", value={"kind": "constant"}))
    c["global_name_with_space"] = _doc_case(base, "E_SCHEMA", _rename(
        "globals", "iterations", "bad name"))
    c["slot_name_with_space"] = _doc_case(base, "E_SCHEMA", _rename(
        "slots", "momentum", "mo mentum"))
    c["path_1025_characters"] = _doc_case(base, "E_PATH", _set(
        "weights", 0, "path", value="\u00e9" * 1025))
    c["path_c1_control"] = _doc_case(base, "E_PATH", _set(
        "weights", 0, "path", value="dense\u0085/kernel"))
    c["path_dot_dot_segment"] = _doc_case(base, "E_PATH", _set(
        "weights", 0, "path", value="dense/../kernel"))
    c["weight_dtype_outside_section_6"] = _doc_case(base, "E_DTYPE", _set(
        "weights", 0, "dtype", value="float8_e4m3"))
    c["hint_name_not_a_string"] = _doc_case(base, "E_SCHEMA", _set(
        "weights", 0, "hints", "name", value=5))
    c["component_without_multi"] = _doc_case(base, "E_SCHEMA", _set(
        "weights", 0, "component", value=0))
    c["checksums_entry_missing"] = _doc_case(base, "E_SCHEMA", _drop("checksums", key))
    c["checksums_entry_extra"] = _doc_case(base, "E_SCHEMA", _set(
        "checksums", "global:nowhere", value=0))
    c["checksums_entry_for_header"] = _doc_case(base, "E_SCHEMA", _set(
        "checksums", "optstate:header", value=zlib.crc32(blob)))
    if "multi_optimizer" in others:
        c["component_out_of_range"] = _doc_case(others["multi_optimizer"], "E_SCHEMA", _set(
            "weights", 0, "component", value=2))
    if "with_model_weights" in others:
        def value_dtype(doc):
            entry = next(w for w in doc["weights"] if w["path"] == "bn/moving_mean")
            entry["dtype"] = "float64"
        c["value_dtype_differs"] = _doc_case(others["with_model_weights"], "E_VALUE_SHAPE",
                                             value_dtype)
    return c


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


def v1_1_without_table_crc32(base: bytes) -> bytes:
    """A 1.1 file as library 0.2.0 wrote it: no ``table_crc32`` (spec 3.6, required from
    1.2 only): readers of 1.2 must accept it."""
    table, data = _split(base)
    table["__metadata__"]["optstate.version"] = "1.1"

    def edit(doc):
        doc["version"] = "1.1"
        del doc["table_crc32"]
    return _rewrite_doc(_join(table, data), edit)


def optional_fields_absent(base: bytes) -> bytes:
    """minimal_sgd without any optional field (4, 4.1, 4.2, 8.1): the summary's defaults."""
    def edit(doc):
        for field in ("module", "hyperparameters", "learning_rate", "wrappers"):
            del doc["optimizer"][field]
        del doc["metadata"]
        del doc["weights"][0]["value"]
        doc["weights"][0]["hints"] = {}
    return _rewrite_doc(base, edit)


def framework_tables():
    """Every converter's naming table (informative columns of optimizers.md)."""
    from optstate_format.converters import _keras_tables, _torch_tables
    return [_keras_tables.KERAS3, _keras_tables.TF_KERAS, _keras_tables.TF_KERAS_LEGACY,
            _torch_tables.TORCH]


def registry_markdown() -> str:
    tables = framework_tables()
    lines = [
        "# optstate optimizer registry (normative, format 1.x: a minor may add entries, 10.1)",
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
        write(state, valid / f"{name}.optstate", fsync=False)
    base = (valid / "minimal_sgd.optstate").read_bytes()
    (valid / "newer_minor_version.optstate").write_bytes(newer_minor(base))
    (valid / "optional_fields_absent.optstate").write_bytes(optional_fields_absent(base))
    (valid / "v1_1_without_table_crc32.optstate").write_bytes(v1_1_without_table_crc32(base))
    for path in sorted(valid.glob("*.optstate")):  # the summary of spec 13.1
        path.with_suffix(".expected.json").write_text(
            json.dumps(summary(path), indent=2, sort_keys=True, allow_nan=False) + "\n")
    others = {p.stem: p.read_bytes() for p in valid.glob("*.optstate")}
    for name, (raw, code, cls) in invalid_cases(base, others).items():
        (invalid / f"{name}.optstate").write_bytes(raw)
        (invalid / f"{name}.expected.json").write_text(
            json.dumps({"code": code, "error": cls}, indent=2, sort_keys=True) + "\n")
    (out / "optimizers.md").write_text(registry_markdown())
    from archive_vectors import build_archives  # sharded archives (spec 14)
    build_archives(out)


def _files(root: Path):
    names = [p for kind in ("valid", "invalid") for p in (root / "conformance" / kind).iterdir()
             if p.is_file()]  # README.md, run.py and reference_reader.py are not generated
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
