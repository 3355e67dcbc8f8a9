"""Tiled score evaluation: a partition of unity, exact where it must be, per sample."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from restoration.priors import load_shipped
from restoration.tiling import TilingError, _ramp, tile_starts, tiled_score


def local_score(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A score that looks at a 5x5 neighbourhood (radius 2) and depends on t per sample."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 6, 5, 5, generator=g, dtype=x.dtype)
    out = F.conv2d(F.pad(torch.cat([x, v], 1), (2, 2, 2, 2), mode="replicate"), w)
    return out * (1.0 + t.to(x.dtype)).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(100, 32, 8), (257, 64, 16), (64, 64, 16), (65, 64, 0)]
)
def test_tiles_cover_with_the_overlap_and_weights_sum_to_one(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))
    weights = _ramp(size, starts, torch.float64, torch.device("cpu"))
    total = torch.zeros(length, dtype=torch.float64)
    for j, s in enumerate(starts):
        total[s : s + size] += weights[j]
    torch.testing.assert_close(total, torch.ones(length, dtype=torch.float64))
    assert (weights >= 0).all()


def test_bad_geometry_is_a_typed_error() -> None:
    with pytest.raises(TilingError):
        tiled_score(local_score, 16, 8)
    with pytest.raises(TilingError):
        tiled_score(local_score, 64, 16, batch=0)


def test_tiled_equals_untiled_for_a_local_score_and_on_a_single_tile() -> None:
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 3, 70, 97, generator=g, dtype=torch.float64), torch.randn(2, 3, 70, 97, generator=g,
                                                                                    dtype=torch.float64)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    # receptive radius 2 < overlap / 2: every blended pixel sees the same neighbourhood as untiled
    tiled = tiled_score(local_score, tile=32, overlap=8, batch=3)(x, v, t)
    torch.testing.assert_close(tiled, local_score(x, v, t), rtol=1e-12, atol=1e-12)
    # a canvas that fits one tile is passed through untouched (the learned network included)
    assert torch.equal(tiled_score(local_score, tile=128, overlap=8)(x, v, t), local_score(x, v, t))


def test_tiling_of_the_shipped_prior_has_no_seams_and_is_per_sample() -> None:
    prior = load_shipped("image")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 96, 80, generator=g) * 0.5
    v = torch.randn(2, 3, 96, 80, generator=g) * 0.5
    t = torch.tensor([0.05, 0.3], dtype=torch.float64)
    score = tiled_score(prior.score, tile=48, overlap=16, batch=4)
    with torch.no_grad():
        both = score(x, v, t)
        alone = score(x[1:], v[1:], t[1:])
        full = prior.score(x, v, t)
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-4)  # a frame alone == in a batch
    # GroupNorm sees per-tile statistics, so tiled != untiled exactly; but close, and no seam:
    rel = (both - full).norm() / full.norm()
    assert float(rel) < 0.1, float(rel)


def test_channels_last_layout_is_the_same_score() -> None:
    from restoration.service import autocast_score

    prior = load_shipped("image")
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 3, 40, 48, generator=g), torch.randn(2, 3, 40, 48, generator=g)
    t = torch.tensor([0.1, 0.6], dtype=torch.float64)
    with torch.no_grad():
        plain = prior.score(x, v, t)
        fast = autocast_score(prior, enabled=False, channels_last=True)(x, v, t)
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
