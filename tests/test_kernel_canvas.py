"""Kernel sizes beyond the kernel prior's canvas: area resampling (kernels.resample_kernel) and
blind CVSA with the kernel process on the prior's canvas (blind(kernel_canvas=...))."""

from __future__ import annotations

import pytest
import torch
from samplers import blind

from restoration.analytic import gaussian_prior_score
from restoration.cld import CLD
from restoration.kernel_ops import KernelError, centre_of_mass, resample_kernel, resample_matrix, to_prior
from restoration.kernels import gaussian_kernel, kernel_extent, sample_kernels
from restoration.operators import blur
from restoration.rng import generator_for


@pytest.mark.parametrize(("n_in", "n_out"), [(63, 31), (31, 63), (15, 7), (31, 31)])
def test_resample_matrix_conserves_mass_and_centre(n_in: int, n_out: int) -> None:
    a = resample_matrix(n_in, n_out)
    assert a.shape == (n_out, n_in) and (a >= 0).all()
    torch.testing.assert_close(a.sum(0), torch.ones(n_in, dtype=a.dtype))  # every input pixel
    torch.testing.assert_close(a.sum(1), torch.full((n_out,), n_in / n_out, dtype=a.dtype))
    torch.testing.assert_close(a, a.flip(0, 1))  # centred: symmetric under reflection
    if n_in == n_out:
        torch.testing.assert_close(a, torch.eye(n_in, dtype=a.dtype))


def test_magnified_gaussian_resamples_to_the_analytic_smaller_one() -> None:
    k63 = gaussian_kernel(63, 6.0, 3.0, 0.4)[None, None].double()
    k31 = resample_kernel(k63, 31)
    ref = gaussian_kernel(31, 6.0 * 31 / 63, 3.0 * 31 / 63, 0.4)[None, None].double()
    assert float(k31.sum()) == pytest.approx(float(k63.sum()), abs=1e-12)
    torch.testing.assert_close(centre_of_mass(k31), torch.tensor([[15.0, 15.0]], dtype=k31.dtype))
    assert float((k31 - ref).abs().max()) < 0.05 * float(ref.max())


def test_round_trip_63_31_63_keeps_kernel_size_statistics() -> None:
    """Generator kernels at 63 px: their 90%-mass radius halves on the 31-px canvas and comes
    back within a pixel (median) after resampling up again; mass and centre are kept."""
    k = sample_kernels(128, 63, torch.Generator().manual_seed(5)).double()
    small = resample_kernel(k, 31)
    back = resample_kernel(small, 63)
    torch.testing.assert_close(back.sum(dim=(1, 2, 3)), torch.ones(128, dtype=k.dtype))
    e63, e31, eb = kernel_extent(k), kernel_extent(small), kernel_extent(back)
    assert float((e31 * 63 / 31 - e63).abs().median()) < 1.0
    assert float((eb - e63).abs().median()) < 1.0
    assert float((centre_of_mass(back) - centre_of_mass(k)).abs().max()) < 0.6
    with pytest.raises(KernelError):
        resample_kernel(k[:, :, :62, :62], 31)


def _blocks(seed: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    for _ in range(14):
        a, b = torch.randint(0, size - 10, (2,), generator=g).tolist()
        c, d = torch.randint(4, 14, (2,), generator=g).tolist()
        x[..., a : a + c, b : b + d] = torch.rand(1, generator=g, dtype=torch.float64) * 2 - 1
    return x


@pytest.mark.parametrize("method", ["proximal", "paper"])
def test_blind_cvsa_with_kernel_process_on_a_smaller_canvas(method: str) -> None:
    """A 15-px kernel with the kernel process (and its prior) on a 7-px canvas: the result
    lives on the 15-px canvas, sums to 1 and is per-sample; kernel_canvas == kernel_size is the
    plain sampler bit for bit. (Restoration quality at 63 px with the shipped priors is a bench
    question, not a unit test.)"""
    cld = CLD()
    line7 = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    line7[..., 3, 1:6] = 0.2
    truth = resample_kernel(line7, 15)
    x = _blocks(0, 32 + 14)
    g = torch.Generator().manual_seed(0)
    y = blur(x, truth) + 0.02 * torch.randn(1, 1, 32, 32, generator=g, dtype=torch.float64)
    fam = torch.cat([line7, line7.transpose(-1, -2)])
    prior_mean = to_prior(fam).mean(0, keepdim=True)
    kernel_score = gaussian_prior_score(cld, prior_mean, 0.2)
    image_score = gaussian_prior_score(cld, 0.0, 0.5)
    ys = torch.cat([y, y.flip(-1)])

    def run(yy, gens, steps):
        return blind(
            yy, None, image_score, kernel_score, image_cld=cld, kernel_cld=cld, kernel_size=15,
            kernel_canvas=7, steps=steps, noise_sigma=0.02, method=method, generator=gens,
            kernel_guidance=0.5, renoise=1.0 if method == "proximal" else None,
            prox_strength=3.0, grad_reg=0.0,
        )  # fmt: skip

    batch = run(ys, [generator_for("a"), generator_for("b")], 8)
    alone = run(ys[1:], [generator_for("b")], 8)
    assert batch.kernel.shape == (2, 1, 15, 15) and batch.x.shape == ys.shape
    torch.testing.assert_close(batch.kernel[1:], alone.kernel, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batch.kernel.sum(dim=(1, 2, 3)).double(), torch.ones(2, dtype=y.dtype))
    # the kernel canvas equal to the kernel size is exactly the plain sampler
    same = blind(
        y, None, image_score, gaussian_prior_score(cld, resample_kernel(prior_mean, 15), 0.2),
        image_cld=cld, kernel_cld=cld, kernel_size=15, steps=4, noise_sigma=0.02, method=method,
        generator=generator_for("c"), kernel_canvas=15,
    )  # fmt: skip
    plain = blind(
        y, None, image_score, gaussian_prior_score(cld, resample_kernel(prior_mean, 15), 0.2),
        image_cld=cld, kernel_cld=cld, kernel_size=15, steps=4, noise_sigma=0.02, method=method,
        generator=generator_for("c"),
    )  # fmt: skip
    torch.testing.assert_close(same.kernel, plain.kernel, rtol=0, atol=0)
    torch.testing.assert_close(same.x, plain.x, rtol=0, atol=0)
    with pytest.raises(ValueError):
        blind(y, None, image_score, kernel_score, image_cld=cld, kernel_cld=cld,
                      kernel_size=15, kernel_canvas=17, steps=2, noise_sigma=0.02,
                      generator=generator_for("d"))


def test_restorer_runs_large_kernels_on_the_kernel_priors_canvas() -> None:
    from types import SimpleNamespace

    from restoration.priors import load_shipped
    from restoration.service import FrameRestorer

    stub = SimpleNamespace(kernel_prior=load_shipped("kernel"))
    trained = int(stub.kernel_prior.meta["data"]["size"])
    assert FrameRestorer.kernel_canvas(stub, 63) == trained == 31
    assert FrameRestorer.kernel_canvas(stub, 31) is None and FrameRestorer.kernel_canvas(stub, 15) is None
