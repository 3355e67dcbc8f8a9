"""Classical (no learned prior) references for the non-blind tasks of restoration/tasks.py.

- :func:`bicubic_upsample`: 4x super-resolution by bicubic interpolation.
- :func:`inpaint_classical`: biharmonic inpainting of the missing pixels (scikit-image), then
  total-variation denoising (Chambolle) of the whole frame, since the observed pixels are noisy.
- Deblurring uses :func:`restoration.classical.wiener_deconv` (valid-convolution aware).
- :func:`hio_phase_retrieval`: Fienup's hybrid input-output with a support and a [-1, 1] box
  constraint, a final error-reduction phase, the best of several random starts by measurement
  residual (per channel).

All take and return tensors on [-1, 1], (B, C, H, W), per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import denoise_tv_chambolle, inpaint_biharmonic
from torch import Tensor

from restoration.rng import Generators, randn


def bicubic_upsample(y: Tensor, factor: int = 4) -> Tensor:
    """Bicubic interpolation by ``factor`` (half-pixel centres, like an area-downsampled grid)."""
    return F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False).clamp(-1, 1)


def inpaint_classical(y: Tensor, mask: Tensor, tv_weight: float) -> Tensor:
    """Biharmonic fill of mask-0 pixels, then TV denoising with ``tv_weight`` (on the [0, 1] scale).

    y: (B, C, H, W) on [-1, 1]; mask: (B or 1, 1, H, W), 1 = observed.
    """
    out = []
    for i in range(y.shape[0]):
        img = ((y[i].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)
        missing = mask[min(i, mask.shape[0] - 1), 0].numpy() < 0.5
        filled = inpaint_biharmonic(img, missing, channel_axis=-1) if missing.any() else img
        if tv_weight > 0:
            filled = denoise_tv_chambolle(filled, weight=tv_weight, channel_axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(filled)).permute(2, 0, 1))
    return (torch.stack(out).to(y.dtype) * 2 - 1).clamp(-1, 1)


def hio_phase_retrieval(
    magnitude: Tensor,
    size: int,
    pad: int,
    generator: Generators,
    *,
    iters: int = 600,
    er_iters: int = 100,
    beta: float = 0.9,
    restarts: int = 4,
) -> Tensor:
    """Fienup's HIO (Fienup 1982) from Fourier magnitudes of zero-padded images.

    magnitude: (B, C, P, P) = |FFT2(pad(x))| (orthonormal) with P = size + 2 pad; the image x is
    (B, C, size, size) on [-1, 1] at the centre (the known support). Each channel is solved on its
    own: ``restarts`` random starts, ``iters`` HIO iterations (feedback ``beta``) on the support
    and [-1, 1] box constraints, then ``er_iters`` error-reduction iterations; per channel the
    start with the smallest magnitude residual wins. Returns (B, C, size, size).
    """
    b, c, p, _ = magnitude.shape
    support = torch.zeros(1, 1, p, p, dtype=torch.bool)
    support[..., pad : pad + size, pad : pad + size] = True
    best = torch.zeros(b, c, size, size, dtype=magnitude.dtype)
    best_res = torch.full((b, c), float("inf"), dtype=magnitude.dtype)
    for _ in range(restarts):
        g = randn((b, c, p, p), generator, dtype=magnitude.dtype) * 0.5 * support
        for k in range(iters + er_iters):
            spec = torch.fft.fft2(g, norm="ortho")
            spec = magnitude * spec / spec.abs().clamp_min(1e-12)
            gp = torch.fft.ifft2(spec, norm="ortho").real
            ok = support & (gp.abs() <= 1.0)
            if k < iters:
                g = torch.where(ok, gp, g - beta * gp)
            else:
                g = torch.where(support, gp.clamp(-1, 1), torch.zeros_like(gp))
        res = (torch.fft.fft2(g, norm="ortho").abs() - magnitude).pow(2).sum(dim=(-2, -1))
        better = res < best_res
        crop = g[..., pad : pad + size, pad : pad + size]
        best = torch.where(better[..., None, None], crop, best)
        best_res = torch.minimum(res, best_res)
    return best
