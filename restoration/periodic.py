"""The classical estimator's periodic canvas: a frame extended so that FFT (circular) convolution
models it, and the circular convolution and kernel maps on that canvas.

FFT methods need a periodic problem, so the classical solvers (:mod:`restoration.classical`)
work on a padded canvas: occluded pixels (mask 0) of ``y`` are inpainted (nearest observed pixel,
then smoothed by harmonic diffusion) and the frame is extended by ``pad`` px on each side with a
smooth periodic continuation (each row/column blends linearly from one edge to the opposite edge),
so the canvas has no wrap-around jump; the solvers then treat the unobserved canvas pixels
(padding and occlusion) as missing data (majorise-minimise refills with the current ``k * x``).
Kernels are placed with their centre at pixel (0, 0) of the canvas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def otf(k: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """rfft2 of a (B, 1, K, K) kernel placed with its centre at pixel (0, 0) of the canvas.

    Multiplying a canvas spectrum by it is the circular true convolution whose output pixel n
    sits under the kernel centre, i.e. ``y = crop(irfft(X * otf))`` at offset (K - 1) / 2.
    """
    return torch.fft.rfft2(place(k, shape))


def place(k: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """P: kernel (B, 1, K, K) -> canvas with the centre at (0, 0) (adjoint: :func:`unplace`)."""
    c = (k.shape[-1] - 1) // 2
    placed = F.pad(k, (0, shape[1] - k.shape[-1], 0, shape[0] - k.shape[-2]))
    return torch.roll(placed, (-c, -c), dims=(-2, -1))


def unplace(canvas: torch.Tensor, size: int) -> torch.Tensor:
    """Pᵀ: the K×K window of a canvas around (0, 0) (circular)."""
    c = (size - 1) // 2
    return torch.roll(canvas, (c, c), dims=(-2, -1))[..., :size, :size]


def diff_otfs(shape: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra of the circular forward differences ∂x u = u[:, j+1] - u[:, j] and ∂y."""
    delta = torch.zeros(shape, device=device, dtype=torch.float64)
    delta[0, 0] = 1.0
    dx = torch.roll(delta, -1, dims=1) - delta
    dy = torch.roll(delta, -1, dims=0) - delta
    return torch.fft.rfft2(dx), torch.fft.rfft2(dy)


def gaussian_otf(shape: tuple[int, int], std: float, device: torch.device) -> torch.Tensor:
    """Spectrum of a centred, sum-1 Gaussian of standard deviation ``std`` px on the canvas."""
    fy = torch.fft.fftfreq(shape[0], device=device, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], device=device, dtype=torch.float64)[None, :]
    return torch.exp(-2 * (torch.pi * std) ** 2 * (fx**2 + fy**2))


def circ_blur(x: torch.Tensor, otf: torch.Tensor) -> torch.Tensor:
    return torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=x.shape[-2:])



# ----------------------------------------------------------------------------- canvas


def inpaint(y: torch.Tensor, mask: torch.Tensor, diffusion_iters: int = 100) -> torch.Tensor:
    """Fill mask-0 pixels: nearest observed pixel, then harmonic (Jacobi) smoothing of the fill."""
    if bool((mask > 0.5).all()):
        return y
    out = y.clone()
    for i in range(y.shape[0]):
        hole = (mask[i, 0] < 0.5).cpu().numpy()
        if not hole.any():
            continue
        if hole.all():
            out[i] = 0.5 if y.min() >= 0 else 0.0
            continue
        _, (iy, ix) = ndimage.distance_transform_edt(hole, return_indices=True)
        idx = torch.from_numpy(np.ascontiguousarray(iy * hole.shape[1] + ix)).to(y.device)
        flat = y[i].flatten(1)
        out[i] = flat[:, idx.flatten()].view_as(y[i])
    hole_t = (mask < 0.5).to(y.dtype)
    for _ in range(diffusion_iters):
        p = F.pad(out, (1, 1, 1, 1), mode="replicate")
        avg = 0.25 * (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:])
        out = out + hole_t * (avg - out)
    return out


def wrap_extend(y: torch.Tensor, pad: int) -> torch.Tensor:
    """Extend (B, C, h, w) by ``pad`` px per side with a smooth periodic continuation.

    Along each axis the 2·pad new pixels between the last and the (wrapped) first row blend
    linearly between the (lightly smoothed) edge values, so the canvas is continuous across the
    FFT's wrap-around.
    """

    def along_last(a: torch.Tensor) -> torch.Tensor:
        smooth = F.avg_pool2d(F.pad(a, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        first, last = smooth[..., :1], smooth[..., -1:]
        t = torch.arange(1, 2 * pad + 1, dtype=a.dtype, device=a.device) / (2 * pad + 1)
        fill = (1 - t) * last + t * first  # from the last column round to the first
        return torch.cat([fill[..., pad:], a, fill[..., :pad]], dim=-1)

    if pad == 0:
        return y
    wide = along_last(y)
    return along_last(wide.transpose(-1, -2)).transpose(-1, -2)


@dataclass(frozen=True)
class Canvas:
    """A frame on its padded FFT canvas: data, observation weights and the offset of ``y``."""

    y: torch.Tensor  # (B, C, Hc, Wc) extended/inpainted observation
    observed: torch.Tensor  # (B, 1, Hc, Wc) 1 where y is a real observation
    pad: int
    h: int
    w: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y.shape[-2], self.y.shape[-1]

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.pad : self.pad + self.h, self.pad : self.pad + self.w]


def make_canvas(y: torch.Tensor, mask: torch.Tensor, pad: int) -> Canvas:
    filled = inpaint(y, mask)
    return Canvas(
        y=wrap_extend(filled, pad),
        observed=F.pad(mask, (pad, pad, pad, pad)),
        pad=pad,
        h=y.shape[-2],
        w=y.shape[-1],
    )


def canvas_pad(kernel_size: int) -> int:
    # the canvas must hold the (K-1)/2 border of x under y; extra room keeps wrap effects away.
    return kernel_size


@dataclass(frozen=True, eq=False)
class CircularKernelMap:
    """k -> [circular convolution of k with the fixed canvases whose spectra are ``spectra``] and its
    adjoint (:func:`restoration.physics.kernel_least_squares` on the periodic canvas)."""

    spectra: tuple[torch.Tensor, ...]
    shape: tuple[int, int]
    size: int

    def forward(self, k: torch.Tensor) -> list[torch.Tensor]:
        pk = torch.fft.rfft2(place(k, self.shape))
        return [torch.fft.irfft2(g * pk, s=self.shape) for g in self.spectra]

    def adjoint(self, rs: list[torch.Tensor]) -> torch.Tensor:
        out = None
        for g, r in zip(self.spectra, rs, strict=True):
            term = unplace(torch.fft.irfft2(g.conj() * torch.fft.rfft2(r), s=self.shape), self.size)
            out = term if out is None else out + term
        assert out is not None
        return out
