"""The one synthetic degradation (restoration/synthetic/degrade.py): valid blur, occluder, noise, 8 bits."""

from __future__ import annotations

import numpy as np
import torch

from restoration.operators import blur
from restoration.synthetic.degrade import observe


def _canvas() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (20 + 4, 30 + 4, 3), dtype=np.uint8)


def _kernel() -> torch.Tensor:
    k = torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return k / k.sum()


def test_valid_blur_noise_and_quantisation() -> None:
    canvas, k = _canvas(), _kernel()
    y8, sharp = observe(canvas, k, 0.0, torch.Generator().manual_seed(0))
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].double() / 255
    clean = blur(x, k)[0].permute(1, 2, 0).numpy()
    assert y8.shape == sharp.shape == (20, 30, 3) and y8.dtype == np.uint8
    np.testing.assert_array_equal(y8, np.rint(clean * 255).astype(np.uint8))
    np.testing.assert_array_equal(sharp, canvas[2:22, 2:32])  # the truth behind the valid window


def test_seeded_and_occluder_drawn_before_the_noise() -> None:
    def run(order: list[str]) -> np.ndarray:
        g = torch.Generator().manual_seed(5)

        def occlude(y: np.ndarray) -> np.ndarray:
            order.append("occlude")
            torch.rand(1, generator=g)  # whatever the occluder draws comes before the noise
            return np.where(np.arange(30)[None, :, None] < 10, 0.5, y)

        return observe(_canvas(), _kernel(), 0.02, g, occlude=occlude)[0]

    calls: list[str] = []
    a, b = run(calls), run(calls)
    np.testing.assert_array_equal(a, b)
    assert calls == ["occlude", "occlude"] and abs(float(a[:, :10].mean()) - 127.5) < 3
