"""Tests for restoration.operators: adjoints, FFT == direct, convention, per-sample behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from restoration.operators import (
    CanvasOffsets,
    OperatorShapeError,
    adjointness_gap,
    apply_mask,
    blur,
    blur_adjoint,
    crop_from_canvas,
    downsample,
    downsample_adjoint,
    kernel_adjoint,
    masked_blur,
    masked_blur_adjoint,
    pad_to_canvas,
    phase_retrieval,
)

ADJ_TOL = 1e-10
METHODS = ("fft", "direct")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(shape, generator=_gen(seed), dtype=dtype) * 2 - 1


def _kernels(batch: int, size: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random non-negative, asymmetric, sum-1 kernels (B, 1, K, K)."""
    k = torch.rand((batch, 1, size, size), generator=_gen(seed), dtype=dtype) ** 3
    return k / k.sum(dim=(-2, -1), keepdim=True)


def _mask(batch: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float64):
    return (torch.rand((batch, 1, h, w), generator=_gen(seed)) > 0.3).to(dtype)


# ----------------------------------------------------------------------------- adjointness


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [1, 3, 15, 31])
def test_blur_adjointness(method: str, size: int) -> None:
    x = _rand((2, 3, 40 + size - 1, 33 + size - 1), 1)
    y = _rand((2, 3, 40, 33), 2)
    k = _kernels(2, size, 3)
    gap = adjointness_gap(lambda a: blur(a, k, method), lambda b: blur_adjoint(b, k, method), x, y)
    assert gap < ADJ_TOL


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [1, 5, 15])
def test_kernel_adjointness(method: str, size: int) -> None:
    x = _rand((3, 3, 30 + size - 1, 21 + size - 1), 4)
    y = _rand((3, 3, 30, 21), 5)
    k = _rand((3, 1, size, size), 6)  # the map is linear in k: no positivity needed
    gap = adjointness_gap(lambda kk: blur(x, kk, method), lambda b: kernel_adjoint(b, x, size, method), k, y)
    assert gap < ADJ_TOL


def test_mask_adjointness() -> None:
    x, y = _rand((2, 3, 17, 12), 7), _rand((2, 3, 17, 12), 8)
    m = torch.rand((2, 1, 17, 12), generator=_gen(9), dtype=torch.float64)  # soft mask
    assert adjointness_gap(lambda a: apply_mask(a, m), lambda b: apply_mask(b, m), x, y) < ADJ_TOL


@pytest.mark.parametrize("method", METHODS)
def test_masked_blur_adjointness(method: str) -> None:
    size = 9
    x = _rand((2, 3, 24 + size - 1, 31 + size - 1), 10)
    y = _rand((2, 3, 24, 31), 11)
    k, m = _kernels(2, size, 12), _mask(2, 24, 31, 13)
    gap = adjointness_gap(
        lambda a: masked_blur(a, k, m, method),
        lambda b: masked_blur_adjoint(b, k, m, method),
        x,
        y,
    )
    assert gap < ADJ_TOL


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_downsample_adjointness(factor: int) -> None:
    x = _rand((2, 3, 16, 24), 14)
    y = _rand((2, 3, 16 // factor, 24 // factor), 15)
    gap = adjointness_gap(lambda a: downsample(a, factor), lambda b: downsample_adjoint(b, factor), x, y)
    assert gap < ADJ_TOL


def test_adjointness_gap_detects_wrong_adjoint() -> None:
    """Control: the un-flipped kernel (a plausible bug) must be caught."""
    size = 7
    x, y = _rand((1, 1, 20 + size - 1, 20 + size - 1), 16), _rand((1, 1, 20, 20), 17)
    k = _kernels(1, size, 18)
    wrong = k.flip(-2, -1)
    gap = adjointness_gap(lambda a: blur(a, k), lambda b: blur_adjoint(b, wrong), x, y)
    assert gap > 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_blur_autograd_matches_adjoint(method: str) -> None:
    size = 5
    x = _rand((2, 2, 14 + size - 1, 11 + size - 1), 19).requires_grad_(True)
    y, k = _rand((2, 2, 14, 11), 20), _kernels(2, size, 21)
    (grad,) = torch.autograd.grad((blur(x, k, method) * y).sum(), x)
    torch.testing.assert_close(grad, blur_adjoint(y, k, method), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- FFT == direct


@pytest.mark.parametrize("size", [1, 3, 15, 31])
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
def test_fft_equals_direct(size: int, dtype: torch.dtype, tol: float) -> None:
    h, w = 37, 52  # non-square, odd/even
    x = _rand((2, 3, h + size - 1, w + size - 1), 22, dtype)
    k = _kernels(2, size, 23, dtype)
    y = _rand((2, 3, h, w), 24, dtype)
    torch.testing.assert_close(blur(x, k, "fft"), blur(x, k, "direct"), rtol=0, atol=tol)
    torch.testing.assert_close(blur_adjoint(y, k, "fft"), blur_adjoint(y, k, "direct"), rtol=0, atol=tol)
    # kernel_adjoint sums ~h*w*C products: compare relative to its magnitude.
    ka_fft, ka_direct = kernel_adjoint(y, x, size, "fft"), kernel_adjoint(y, x, size, "direct")
    scale = float(ka_direct.abs().max())
    torch.testing.assert_close(ka_fft, ka_direct, rtol=0, atol=tol * max(scale, 1.0))


# ----------------------------------------------------------------------------- convention


@pytest.mark.parametrize("method", METHODS)
def test_true_convolution_delta_gives_kernel(method: str) -> None:
    size = 7
    k = torch.zeros(1, 1, size, size, dtype=torch.float64)
    k[0, 0, 0, 1], k[0, 0, 2, 5], k[0, 0, 6, 3] = 0.5, 0.3, 0.2  # asymmetric
    x = torch.zeros(1, 1, 2 * size - 1, 2 * size - 1, dtype=torch.float64)
    x[0, 0, size - 1, size - 1] = 1.0  # delta at the canvas centre
    y = blur(x, k, method)
    torch.testing.assert_close(y, k, rtol=0, atol=1e-12)
    assert not torch.allclose(y, k.flip(-2, -1))


@pytest.mark.parametrize("method", METHODS)
def test_blur_matches_scipy_valid_convolution(method: str) -> None:
    size = 9
    x = _rand((2, 2, 25, 30), 25)
    k = _kernels(2, size, 26)
    y = blur(x, k, method)
    for b in range(2):
        for c in range(2):
            ref = scipy.signal.convolve2d(x[b, c].numpy(), k[b, 0].numpy(), mode="valid")
            np.testing.assert_allclose(y[b, c].numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_centred_delta_kernel_is_centre_crop(method: str) -> None:
    size = 11
    x = _rand((1, 3, 20 + size - 1, 16 + size - 1), 27)
    k = torch.zeros(1, 1, size, size, dtype=torch.float64)
    k[..., size // 2, size // 2] = 1.0
    c = (size - 1) // 2
    torch.testing.assert_close(blur(x, k, method), x[..., c : c + 20, c : c + 16])


@pytest.mark.parametrize("method", METHODS)
def test_shapes(method: str) -> None:
    x = torch.zeros(3, 2, 40, 29)
    k = _kernels(3, 7, 28, torch.float32)
    y = blur(x, k, method)
    assert y.shape == (3, 2, 34, 23)
    assert blur_adjoint(y, k, method).shape == x.shape
    assert kernel_adjoint(y, x, 7, method).shape == (3, 1, 7, 7)
    m = torch.ones(3, 1, 34, 23)
    assert masked_blur(x, k, m, method).shape == y.shape
    assert masked_blur_adjoint(y, k, m, method).shape == x.shape
    assert downsample(torch.zeros(3, 2, 40, 28), 4).shape == (3, 2, 10, 7)
    assert downsample_adjoint(torch.zeros(3, 2, 10, 7), 4).shape == (3, 2, 40, 28)
    assert phase_retrieval(x).shape == x.shape
    assert blur(x, k, method).dtype == torch.float32


# ----------------------------------------------------------------------------- per sample


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_independence(method: str) -> None:
    size, h, w = 9, 21, 26
    x = _rand((4, 3, h + size - 1, w + size - 1), 29, torch.float32)
    y = _rand((4, 3, h, w), 30, torch.float32)
    k = _kernels(4, size, 31, torch.float32)
    m = _mask(4, h, w, 32, torch.float32)
    batched = {
        "blur": blur(x, k, method),
        "adj": blur_adjoint(y, k, method),
        "kadj": kernel_adjoint(y, x, size, method),
        "masked": masked_blur(x, k, m, method),
        "masked_adj": masked_blur_adjoint(y, k, m, method),
        "down": downsample(x[..., :28, :32], 4),
        "phase": phase_retrieval(x),
    }
    for i in range(4):
        s = slice(i, i + 1)
        alone = {
            "blur": blur(x[s], k[s], method),
            "adj": blur_adjoint(y[s], k[s], method),
            "kadj": kernel_adjoint(y[s], x[s], size, method),
            "masked": masked_blur(x[s], k[s], m[s], method),
            "masked_adj": masked_blur_adjoint(y[s], k[s], m[s], method),
            "down": downsample(x[s, :, :28, :32], 4),
            "phase": phase_retrieval(x[s]),
        }
        for name, value in alone.items():
            torch.testing.assert_close(batched[name][s], value, rtol=1e-6, atol=1e-6, msg=name)
    # Different kernels really give different outputs (the test above is not vacuous).
    assert not torch.allclose(batched["blur"][0], blur(x[:1], k[1:2], method)[0])


def test_kernel_batch_of_one_broadcasts() -> None:
    x = _rand((3, 2, 20, 20), 33)
    k = _kernels(1, 5, 34)
    torch.testing.assert_close(blur(x, k), blur(x, k.expand(3, 1, 5, 5)))


# ----------------------------------------------------------------------------- other operators


def test_phase_retrieval_gradcheck() -> None:
    x = _rand((2, 1, 5, 4), 35).requires_grad_(True)
    assert torch.autograd.gradcheck(phase_retrieval, (x,), eps=1e-6, atol=1e-8)


def test_phase_retrieval_values() -> None:
    x = _rand((2, 3, 8, 6), 36)
    ref = np.abs(np.fft.fft2(x.numpy(), norm="ortho"))
    np.testing.assert_allclose(phase_retrieval(x).numpy(), ref, rtol=0, atol=1e-12)
    # Orthonormal FFT: Parseval holds per sample.
    torch.testing.assert_close(phase_retrieval(x).norm(dim=(-2, -1)), x.norm(dim=(-2, -1)))
    # Magnitude is invariant to a circular shift (why the problem is hard).
    torch.testing.assert_close(phase_retrieval(x.roll(2, -1)), phase_retrieval(x))


@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_constant_and_block_mean(factor: int) -> None:
    const = torch.full((2, 3, 16, 8), 0.37, dtype=torch.float64)
    expected = torch.full_like(const[..., ::factor, ::factor], 0.37)
    torch.testing.assert_close(downsample(const, factor), expected)
    x = _rand((2, 3, 16, 8), 37)
    blocks = x.reshape(2, 3, 16 // factor, factor, 8 // factor, factor).mean(dim=(3, 5))
    torch.testing.assert_close(downsample(x, factor), blocks)


@pytest.mark.parametrize("method", METHODS)
def test_masked_pixels_have_zero_output(method: str) -> None:
    size = 5
    x = _rand((2, 3, 20 + size - 1, 18 + size - 1), 38)
    k, m = _kernels(2, size, 39), _mask(2, 20, 18, 40)
    out = masked_blur(x, k, m, method)
    hidden = (m == 0).expand_as(out)
    assert hidden.any()
    assert torch.all(out[hidden] == 0)
    observed = ~hidden
    torch.testing.assert_close(out[observed], blur(x, k, method)[observed])
    assert torch.all(apply_mask(x[..., :20, :18], m)[hidden] == 0)


@pytest.mark.parametrize("method", METHODS)
def test_kernel_adjoint_matches_autograd(method: str) -> None:
    size = 7
    x = _rand((3, 3, 22 + size - 1, 19 + size - 1), 41)
    y = _rand((3, 3, 22, 19), 42)
    k = _kernels(3, size, 43).requires_grad_(True)
    (grad,) = torch.autograd.grad((blur(x, k, method) * y).sum(), k)
    torch.testing.assert_close(kernel_adjoint(y, x, size, method), grad, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- canvas helpers


@pytest.mark.parametrize("size", [1, 5, 15])
def test_crop_from_true_canvas_is_clean_image(size: int) -> None:
    h, w = 23, 30
    canvas = _rand((2, 3, h + size - 1, w + size - 1), 44)
    c = (size - 1) // 2
    clean = canvas[..., c : c + h, c : c + w]  # how the data generator defines the sharp frame
    y = blur(canvas, _kernels(2, size, 45))
    y_pad, m_pad, offsets = pad_to_canvas(y, None, size)
    assert (offsets.canvas_height, offsets.canvas_width) == canvas.shape[-2:]
    torch.testing.assert_close(y_pad, y)
    assert torch.all(m_pad == 1)
    torch.testing.assert_close(crop_from_canvas(canvas, offsets, h, w), clean)
    torch.testing.assert_close(crop_from_canvas(canvas, (offsets.top, offsets.left), h, w), clean)


@pytest.mark.parametrize("fill", ["replicate", "zeros"])
def test_pad_to_canvas_with_multiple(fill: str) -> None:
    size, h, w, multiple = 7, 21, 26, 16
    true_canvas = _rand((2, 3, h + size - 1, w + size - 1), 46)
    k = _kernels(2, size, 47)
    y = blur(true_canvas, k)
    mask = _mask(2, h, w, 48)
    y_pad, m_pad, off = pad_to_canvas(y, mask, size, multiple=multiple, fill=fill)
    assert off.canvas_height % multiple == 0 and off.canvas_width % multiple == 0
    assert off.canvas_height >= h + size - 1 and off.canvas_width >= w + size - 1
    assert y_pad.shape[-2:] == (off.canvas_height - size + 1, off.canvas_width - size + 1)
    assert m_pad.shape == (2, 1, *y_pad.shape[-2:])
    assert float(m_pad.sum()) == float(mask.sum())  # padding is unobserved
    # Embed the true canvas in the bigger one at (pad_top, pad_left), random elsewhere.
    big = _rand((2, 3, off.canvas_height, off.canvas_width), 49)
    big[..., off.pad_top : off.pad_top + h + size - 1, off.pad_left : off.pad_left + w + size - 1] = (
        true_canvas
    )
    torch.testing.assert_close(masked_blur(big, k, m_pad), apply_mask(y_pad, m_pad))
    c = (size - 1) // 2
    torch.testing.assert_close(crop_from_canvas(big, off, h, w), true_canvas[..., c : c + h, c : c + w])
    inner = y_pad[..., off.pad_top : off.pad_top + h, off.pad_left : off.pad_left + w]
    torch.testing.assert_close(inner, y)


def test_canvas_offsets_is_frozen() -> None:
    _, _, off = pad_to_canvas(torch.zeros(1, 1, 8, 8), None, 3)
    assert isinstance(off, CanvasOffsets)
    with pytest.raises(AttributeError):
        off.top = 0  # type: ignore[misc]


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise() -> None:
    x = torch.zeros(2, 3, 16, 16)
    k = _kernels(2, 3, 50, torch.float32)
    with pytest.raises(OperatorShapeError):
        blur(x, _kernels(2, 4, 51, torch.float32))  # even K
    with pytest.raises(OperatorShapeError):
        blur(x, _kernels(2, 17, 52, torch.float32))  # larger than canvas
    with pytest.raises(OperatorShapeError):
        blur(x[0], k)  # rank 3
    with pytest.raises(OperatorShapeError):
        blur(x, _kernels(3, 3, 53, torch.float32))  # batch mismatch
    with pytest.raises(OperatorShapeError):
        blur(x, k, method="spectral")  # type: ignore[arg-type]
    with pytest.raises(OperatorShapeError):
        kernel_adjoint(torch.zeros(2, 3, 15, 15), x, 3)  # y not H-K+1
    with pytest.raises(OperatorShapeError):
        apply_mask(x, torch.ones(2, 3, 16, 16))  # mask must have one channel
    with pytest.raises(OperatorShapeError):
        downsample(torch.zeros(1, 1, 10, 8), 4)
    with pytest.raises(OperatorShapeError):
        pad_to_canvas(x, None, 4)
    with pytest.raises(OperatorShapeError):
        crop_from_canvas(x, (10, 0), 8, 8)
    with pytest.raises(OperatorShapeError):
        blur(x.to(torch.int64), k)
