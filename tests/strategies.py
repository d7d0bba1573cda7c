"""Hypothesis strategies shared by the convolution tests (tests/test_onednn.py, tests/test_conv_epilogue.py)."""
from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st


@st.composite
def conv_geometries(draw):
    """An NHWC input shape, an HWIO kernel shape, strides, pads, dilations and groups of a valid 2-D convolution:
    kernels up to 5x5, strides up to 3, dilations up to 2, uneven pads up to 2, dense, grouped or (half the time)
    depthwise, on inputs the dilated kernel fits once padded."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    n, groups = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2, 3]))
    in_per_group, out_per_group = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if draw(st.booleans()):  # depthwise: one filter per channel
        groups, in_per_group, out_per_group = draw(st.integers(2, 16)), 1, 1
    for size, k, d, (lo, hi) in ((h, kh, dilations[0], pads[0]), (w, kw, dilations[1], pads[1])):
        assume(size + lo + hi >= (k - 1) * d + 1)
    return ((n, h, w, groups * in_per_group), (kh, kw, in_per_group, groups * out_per_group), strides, pads, dilations,
            groups)
