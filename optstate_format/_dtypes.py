"""The one table of dtypes (spec section 6). Names are the spec's; codes are safetensors'."""

from __future__ import annotations

import numpy as np

from ._errors import FormatError, UnsupportedError

# spec name -> (safetensors dtype code, numpy storage dtype, itemsize)
DTYPES = {
    "float64": ("F64", "<f8", 8),
    "float32": ("F32", "<f4", 4),
    "float16": ("F16", "<f2", 2),
    "bfloat16": ("BF16", "<u2", 2),  # stored as raw 16-bit words; see spec 6
    "int64": ("I64", "<i8", 8),
    "int32": ("I32", "<i4", 4),
    "int16": ("I16", "<i2", 2),
    "int8": ("I8", "i1", 1),
    "uint64": ("U64", "<u8", 8),
    "uint32": ("U32", "<u4", 4),
    "uint16": ("U16", "<u2", 2),
    "uint8": ("U8", "u1", 1),
    "bool": ("BOOL", "?", 1),
}
CODE_TO_NAME = {code: name for name, (code, _, _) in DTYPES.items()}
FLOATING = {"float64", "float32", "float16", "bfloat16"}


def _bfloat16_type():
    try:
        import ml_dtypes  # optional: present wherever TensorFlow or JAX is installed
    except ImportError:  # pragma: no cover - depends on environment
        return None
    return np.dtype(ml_dtypes.bfloat16)


def name_of(dtype) -> str:
    """Return the spec name of a numpy (or numpy-convertible) dtype.

    >>> name_of(np.float32)
    'float32'
    """
    text = str(getattr(dtype, "name", dtype))
    if text in DTYPES:
        return text
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UnsupportedError(f"dtype {text!r} is not in the optstate dtype table; "
                               f"supported: {sorted(DTYPES)}.") from None
    if dt.name in DTYPES:
        return dt.name
    raise UnsupportedError(f"dtype {dt.name!r} is not in the optstate dtype table; "
                           f"supported: {sorted(DTYPES)}.")


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype used to hold bytes of spec dtype ``name`` (little-endian)."""
    if name == "bfloat16":
        bf = _bfloat16_type()
        if bf is not None:
            return bf
    return np.dtype(DTYPES[name][1])


def from_code(code, *, key=None) -> str:
    if code not in CODE_TO_NAME:
        raise FormatError(f"tensor dtype {code!r} is not supported; expected one of "
                          f"{sorted(CODE_TO_NAME)}. Rewrite the file with a supported dtype.",
                          code="E_DTYPE", key=key)
    return CODE_TO_NAME[code]


def itemsize(name: str) -> int:
    return DTYPES[name][2]


_FINITE_CHUNK = 1 << 22
_SMALL = 4096  # elements: below this, count_nonfinite counts without trying the sum first
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def count_nonfinite(arr, proven=frozenset()) -> int:
    """How many NaN/Inf values a float16/32/64 array holds (0 for any other dtype).

    ``proven``: ids of arrays already proven finite (the reader's, while it read them), which
    cost nothing here.

    A finite sum proves there are none (NaN and Inf survive any sum), so the usual array
    costs one read and no temporary; only a sum that is not finite (a NaN or Inf, or an
    overflow of large finite values) is counted exactly, chunk by chunk.

    >>> count_nonfinite(np.array([1.0, np.nan, np.inf, -np.inf, 2.0], np.float32))
    3
    >>> count_nonfinite(np.full(4, 60000.0, np.float16)), count_nonfinite(np.arange(3))
    (0, 0)
    """
    if id(arr) in proven:
        return 0
    arr = np.asarray(arr)
    if arr.dtype not in _FLOATS or arr.size == 0:
        return 0
    if arr.size <= _SMALL:  # counted outright: cheaper than the sum's error-state guard
        return int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if proven_finite(arr):
        return 0
    flat = arr.reshape(-1)
    return sum(int(flat[i:i + _FINITE_CHUNK].size - np.count_nonzero(
        np.isfinite(flat[i:i + _FINITE_CHUNK]))) for i in range(0, flat.size, _FINITE_CHUNK))


def proven_finite(arr) -> bool:
    """True when a float16/32/64 array's sum is finite, which proves it holds no NaN or Inf
    (False says nothing: an overflow of large finite values also makes the sum infinite).
    One read, no temporary; numpy releases the GIL for it, so reader threads run it while the
    bytes they just read are still in cache."""
    arr = np.asarray(arr)
    if arr.dtype not in _FLOATS or arr.size == 0:
        return False
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.add.reduce(arr.reshape(-1))))
