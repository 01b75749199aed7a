"""The accelerated crc32 the core uses is exactly zlib's (the spec's checksum)."""

import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from optstate_format import _io


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), st.integers(0, 2**32 - 1))
def test_crc32_equals_zlibs_on_any_bytes_and_seed(data, seed):
    assert _io.crc32(data) == zlib.crc32(data)
    assert _io.crc32(data, seed) == zlib.crc32(data, seed)


def test_crc32_equals_zlibs_on_large_unaligned_views():
    raw = np.random.default_rng(7).integers(0, 256, 40_000_003, dtype=np.uint8)
    for start in (0, 1, 3, 63, 4097):  # every alignment the SIMD paths distinguish
        view = memoryview(raw[start:])
        assert _io.crc32(view) == zlib.crc32(view)
