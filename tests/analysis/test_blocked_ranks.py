"""The pieces of the blocked rank engine that its proof rests on, checked against their definitions.

docs/information-imbalance.md: thresholds rounded outwards to the keys' dtype, the round-off margin M_i,
the centre and power-of-two scale of the GEMM operand z, and the packed count of a comparison mask.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mitosis_cli.analysis import blocked_ranks as br

U32, U64 = 2.0**-24, 2.0**-53


def test_outward_rounds_thresholds_away_from_the_inside() -> None:
    # The float32 value below (lo) or above (hi) each float64 threshold, nearest to it; a value that
    # float32 holds exactly stays as it is.
    rng = np.random.default_rng(0)
    exact = rng.normal(size=200).astype(np.float32).astype(np.float64)
    between = exact + np.abs(exact) * rng.uniform(1e-9, 5e-8, size=200) * rng.choice([-1, 1], size=200)
    values = np.concatenate([exact, between, [0.0, 1.0, -1.0, 2.0**-130]])
    down = np.float32(values)
    down = np.where(down.astype(np.float64) > values, np.nextafter(down, np.float32(-np.inf)), down)
    up = np.float32(values)
    up = np.where(up.astype(np.float64) < values, np.nextafter(up, np.float32(np.inf)), up)
    for is_up, expected in ((False, down), (True, up)):
        got = br._outward(torch.from_numpy(values), torch.float32, up=is_up)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), expected)
    # float64 keys: the thresholds are already in their dtype.
    np.testing.assert_array_equal(br._outward(torch.from_numpy(values), torch.float64, up=True).numpy(), values)


def test_count_true_over_several_byte_lanes() -> None:
    # Two lanes of 255 int64 words per row (N up to 2 x 2040 points), one row all True: 4080 per row,
    # more than a byte lane or one lane group could hold.
    rng = np.random.default_rng(1)
    mask = torch.from_numpy(rng.random((4, 2 * br._PAD)) < 0.5)
    mask[0] = True
    mask[1] = False
    np.testing.assert_array_equal(br._count_true(mask).numpy(), mask.numpy().sum(1))


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _documented_margin(z: np.ndarray, slab: int, u: float, z_is_input: bool, tiny: float) -> np.ndarray:
    """M_i as docs/information-imbalance.md writes it, for the operand z (float64 copy)."""
    d = z.shape[1]
    a = (z**2).sum(1)
    b = a.max()
    n_slabs = math.ceil(d / slab)
    g = _gamma(slab + 1, u) + _gamma(n_slabs, u) * (1 + _gamma(slab + 1, u)) if n_slabs > 1 else _gamma(d + 2, u)
    delta = 0.0 if z_is_input else u + 2 * U64
    dp = delta / (1 - delta)
    c2 = 2 * u + 4 * dp + 2 * dp**2 + 5 * _gamma(d + 3, U64) + 8 * U64
    return 1.01 * (g * (1 + 2 * u) * (b + 2 * np.sqrt(a * b)) + c2 * (a + b)) + 4 * (d + 4) * tiny


@pytest.mark.parametrize(
    ("offset", "dtype", "z_is_input"),
    [
        (0.0, torch.float32, True),  # float32 points near the origin: z is the input itself
        (50.0, torch.float32, False),  # far from the origin: centred, so z is rounded (delta > 0)
        (50.0, torch.float64, False),  # float64 keys: float64's u throughout
    ],
)
@pytest.mark.parametrize("slab", [10, 4, 3])  # one GEMM; three slabs of 4 features; four of 3
def test_margin_is_the_documented_bound(offset: float, dtype: torch.dtype, z_is_input: bool, slab: int) -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(30, 10)) + offset).astype(np.float32 if z_is_input else np.float64)
    space = br._Space(torch.from_numpy(x), None, dtype, 2**20)
    z = space.get(0, 30).to(torch.float64).numpy()
    u = U32 if dtype == torch.float32 else U64
    expected = _documented_margin(z, slab, u, z_is_input, torch.finfo(dtype).tiny)
    np.testing.assert_allclose(space.margin(slab).numpy(), expected, rtol=1e-13, atol=0)
    if z_is_input:
        assert space.get(0, 30).data_ptr() == space.x.data_ptr()


def test_margin_of_coincident_points_is_the_underflow_term() -> None:
    # All points at the origin: A_i = B = 0 and only the underflow term 4 (d + 4) tiny is left.
    space = br._Space(torch.zeros(6, 3), None, torch.float32, 2**20)
    np.testing.assert_array_equal(space.margin(3).numpy(), np.full(6, 4 * 7 * torch.finfo(torch.float32).tiny))


def test_operand_is_centred_at_the_column_means() -> None:
    # Far from the origin the operand is x minus the column means, accumulated over several tiles
    # (a cache of 240 bytes holds 3 rows of 3 float64 columns).
    rng = np.random.default_rng(3)
    x = 1e4 + rng.normal(size=(50, 3))
    space = br._Space(torch.from_numpy(x), None, torch.float32, 240)
    assert space.centre
    np.testing.assert_allclose(space.mu.numpy(), x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(space.get(0, 50).numpy(), (x - x.mean(0)).astype(np.float32), rtol=1e-6)
    # Near the origin the points are used as they are.
    near = torch.from_numpy(rng.normal(size=(50, 3)).astype(np.float32))
    space = br._Space(near, None, torch.float32, 240)
    assert not space.centre
    np.testing.assert_array_equal(space.get(0, 50).numpy(), near.numpy())


@pytest.mark.parametrize("largest", [2.0**-100, 2.0**-45, 100.0, 2.0**30, 2.0**45, 2.0**100])
def test_scale_is_a_power_of_two_only_where_float32_would_underflow_or_overflow(largest: float) -> None:
    # Values in [2^-40, 2^40] are kept; others are scaled by a power of two to a largest |z| in [1/2, 1).
    rng = np.random.default_rng(4)
    half = rng.uniform(-1, 1, size=(20, 3)) * largest
    half[0, 0] = largest
    x = np.concatenate([half, -half])  # mean exactly 0: no centring
    space = br._Space(torch.from_numpy(x), None, torch.float64, 2**20)
    assert not space.centre
    z = space.get(0, 40).numpy()
    if 2.0**-40 <= largest <= 2.0**40:
        assert space.scale == 1.0
        np.testing.assert_array_equal(z, x)
    else:
        assert math.log2(space.scale).is_integer()
        assert 0.5 <= np.abs(z).max() < 1
        np.testing.assert_array_equal(z, x * space.scale)


def _pass_dtype(x: np.ndarray, k: int, queries: np.ndarray | None) -> torch.dtype:
    """The keys' dtype at the end of a neighbour (k > 0) or rank pass over x."""
    q = None if queries is None else torch.from_numpy(queries)
    blocked = br._Pass(torch.from_numpy(x), None, k, q, 50, 2**24)
    for _ in blocked:
        pass
    return blocked.space.dtype


def test_float32_keys_are_kept_where_they_separate_and_dropped_where_they_cannot() -> None:
    # Ordinary data: the float32 filter decides nearly everything, and the pass stays in float32 (half
    # the GEMM time). A shell of points whose distances from point 0 differ by 1e-9 only: around point 0
    # every key lies in the band, and the pass goes to float64 rather than resolving them pair by pair.
    # Ranking more than 32 points per row sorts each row, and sorts need float64 keys from the start.
    rng = np.random.default_rng(5)
    n = 600
    x = rng.normal(size=(n, 4))
    one = np.array([[rng.choice(np.delete(np.arange(n), i))] for i in range(n)])
    many = np.array([rng.permutation(np.delete(np.arange(n), i))[:40] for i in range(n)])
    assert _pass_dtype(x, 1, None) == torch.float32
    assert _pass_dtype(x, 0, one) == torch.float32
    assert _pass_dtype(x, 0, many) == torch.float64
    v = rng.normal(size=(n - 1, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    shell = np.concatenate([np.zeros((1, 4)), v * np.sqrt(1 + rng.permutation(n - 1) * 1e-9)[:, None]])
    assert _pass_dtype(shell, 1, None) == torch.float64
