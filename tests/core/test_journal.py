"""The rollback journal's constant elision is bitwise: restoring gives back the same bits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optstate_format._journal import constant_value, filled

DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8, np.bool_]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DTYPES).flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6))))
def test_constant_value_is_exactly_bitwise_constancy(arr):
    bits = arr.reshape(-1).view(np.dtype(f"u{arr.dtype.itemsize}"))
    value = constant_value(arr)
    assert (value is not None) == bool(np.all(bits == bits[0]))
    if value is not None:
        back = filled(value, arr.shape)
        assert back.dtype == arr.dtype and back.shape == arr.shape
        assert back.tobytes() == arr.tobytes()


def test_signed_zero_and_nan_payloads_are_not_confused():
    assert constant_value(np.array([0.0, -0.0], np.float32)) is None
    nan_a = np.array([0x7FC00000, 0x7FC00001], np.uint32).view(np.float32)
    assert constant_value(nan_a) is None
    nans = np.full(10, 0x7FC00001, np.uint32).view(np.float32)
    assert filled(constant_value(nans), (2, 5)).tobytes() == nans.tobytes()


@pytest.mark.parametrize("where", [0, 4095, 4096, 5_000_000, 9_999_999])
def test_one_differing_element_anywhere_in_a_large_array_is_found(where):
    arr = np.zeros(10_000_000, np.float32)  # past the prefix and across several chunks
    assert constant_value(arr) is not None
    arr[where] = 1e-30
    assert constant_value(arr) is None
    arr[:] = 0.1
    arr[where] = np.nextafter(np.float32(0.1), np.float32(1))
    assert constant_value(arr) is None
    arr[where] = 0.1
    np.testing.assert_array_equal(filled(constant_value(arr), arr.shape), arr)


def test_unsupported_layouts_are_journalled_as_copies():
    assert constant_value(np.zeros(0, np.float32)) is None            # nothing to fill from
    assert constant_value(np.zeros(4, np.complex128)) is None         # 16-byte elements
    assert constant_value(np.zeros((4, 4), np.float32)[:, ::2]) is None  # not contiguous
