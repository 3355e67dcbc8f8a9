"""The score network over overlapping tiles: native-resolution restoration in bounded memory.

A score network's cost and memory grow with the canvas; a frame of 640x480 or 1920x1080 restored
at its own resolution would hold every activation map of the whole canvas at once. `tiled_score`
wraps a :data:`restoration.cld.ScoreFn` so that the network sees square tiles of `tile` px that
overlap by `overlap` px, `batch` tiles per forward pass, and the tile outputs are blended with
weights that form a partition of unity (zero on the outer quarter of each overlap, where a tile
sees its own border padding instead of the canvas; a linear ramp across the middle half; flat
elsewhere):

    s(u) = sum_j  w_j * P_j^T s_theta(P_j u),    sum_j P_j^T w_j = 1,

with P_j the crop to tile j. Only the score is tiled: the data-consistency step of
:func:`restoration.cvsa.restore_blind` still solves over the whole canvas (FFT, valid
convolution), so the blur that crosses tile borders is modelled exactly.

Where it must, the tiled score equals the untiled one: a canvas that fits in one tile is passed
through unchanged, and a score whose receptive radius is at most `overlap / 4` (e.g. the
Gaussian part of the mixed score, which is pointwise) is reproduced to rounding, since wherever a
tile's weight is non-zero it sees the same neighbourhood as on the canvas. A learned U-Net with
GroupNorm sees per-tile statistics instead of whole-canvas ones; it was trained on 64-px crops,
so tiles of that order are closer to its training distribution than a 1920-px canvas is.
Everything is per sample: a tile carries its own frame's time t, and tiles of different frames
never mix, so a frame tiled alone equals it tiled in a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from restoration.cld import ScoreFn


class TilingError(ValueError):
    """Invalid tile geometry."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size min(tile, length) covering [0, length), evenly spread so that
    neighbours overlap by at least `overlap` px (fewest tiles that do)."""
    if tile <= overlap * 2:
        raise TilingError(f"tile ({tile}) must exceed twice the overlap ({overlap})")
    if length <= tile:
        return [0]
    n = -(-(length - overlap) // (tile - overlap))  # ceil
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(size: int, starts: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_tiles, size) 1-D weights, normalised to sum to 1 over tiles at every position. Across
    each overlap of `ov` px with a neighbour, a tile's outermost ov // 4 px get weight 0 (they see
    the tile border's padding, not the canvas) and the middle ov / 2 px ramp linearly."""
    length = starts[-1] + size
    weights = torch.zeros(len(starts), size, dtype=dtype, device=device)
    pos = torch.arange(size, dtype=dtype, device=device)
    for j, s in enumerate(starts):
        w = torch.ones(size, dtype=dtype, device=device)
        if j > 0:  # ramp up across the overlap with the previous tile
            ov = starts[j - 1] + size - s
            w = torch.minimum(w, (pos - ov // 4 + 0.5) / max(ov - 2 * (ov // 4), 1))
        if j < len(starts) - 1:  # ramp down across the overlap with the next tile
            ov = s + size - starts[j + 1]
            w = torch.minimum(w, (size - pos - ov // 4 - 0.5) / max(ov - 2 * (ov // 4), 1))
        weights[j] = w.clamp(0.0, 1.0)
    total = torch.zeros(length, dtype=dtype, device=device)
    for j, s in enumerate(starts):
        total[s : s + size] += weights[j]
    for j, s in enumerate(starts):
        weights[j] = weights[j] / total[s : s + size]
    return weights


def tiled_score(score_fn: ScoreFn, tile: int, overlap: int, batch: int = 4) -> ScoreFn:
    """`score_fn` evaluated over overlapping `tile` x `tile` tiles, `batch` tiles per call, blended
    without seams (see the module docstring). Canvases no larger than `tile` go straight through."""
    if tile < 8 or overlap < 0 or batch < 1:
        raise TilingError(f"need tile >= 8, overlap >= 0, batch >= 1; got {tile}, {overlap}, {batch}")
    tile_starts(tile + 1, tile, overlap)  # validates tile > 2 overlap

    def score(x: Tensor, v: Tensor, t: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if h <= tile and w <= tile:
            return score_fn(x, v, t)
        th, tw = min(tile, h), min(tile, w)
        ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        wy = _ramp(th, ys, x.dtype, x.device)
        wx = _ramp(tw, xs, x.dtype, x.device)
        # (sample, row, col) for every tile; a tile keeps its own sample's time
        index = [(i, r, c) for i in range(b) for r in range(len(ys)) for c in range(len(xs))]
        out = torch.zeros_like(x)
        for lo in range(0, len(index), batch):
            chunk = index[lo : lo + batch]
            xt = torch.stack([x[i, :, ys[r] : ys[r] + th, xs[c] : xs[c] + tw] for i, r, c in chunk])
            vt = torch.stack([v[i, :, ys[r] : ys[r] + th, xs[c] : xs[c] + tw] for i, r, c in chunk])
            tt = torch.stack([t[i] for i, _, _ in chunk])
            st = score_fn(xt, vt, tt).to(x.dtype)
            for (i, r, c), s in zip(chunk, st, strict=True):
                blend = wy[r][:, None] * wx[c][None, :]
                out[i, :, ys[r] : ys[r] + th, xs[c] : xs[c] + tw] += s * blend
        return out

    return score
