"""The one synthetic degradation: render -> blur -> (occlude) -> noise -> 8-bit quantise.

A camera frame of h x w is the *valid* true convolution of an (h + K - 1) x (w + K - 1) canvas
(docs/design.md §3), so its borders drew on pixels outside it; Gaussian noise is added on the
[0, 1] scale and the result rounded to 8 bits, as a saved frame is. The benchmark suites, the
native-resolution suites and the size benchmark all observe their renders through
:func:`observe`, so they differ only in what they render and which kernel they draw.

Draw order (part of every benchmark's determinism): whatever ``occlude`` draws from ``g`` comes
after the blur and before the noise, and the noise is one ``(h, w, 3)`` float64 draw.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from restoration.operators import Method, blur


def observe(
    canvas: np.ndarray,
    kernel: torch.Tensor,
    noise_sigma: float,
    g: torch.Generator,
    *,
    method: Method = "fft",
    occlude: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(observed uint8 (h, w, 3), sharp truth (h, w, 3))`` of a uint8 canvas ``(h + K - 1,
    w + K - 1, 3)`` blurred by ``kernel`` ``(1, 1, K, K)`` (float64, sums to 1). ``occlude(y)``
    may replace pixels of the blurred frame (on [0, 1]) before the noise, e.g. a hand."""
    x = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1)[None].double() / 255.0
    y = blur(x, kernel, method=method)[0].permute(1, 2, 0).numpy()  # (h, w, 3) on [0, 1]
    if occlude is not None:
        y = occlude(y)
    noise = torch.randn(y.shape, generator=g, dtype=torch.float64).numpy() * noise_sigma
    y8 = np.clip(np.rint((y + noise) * 255.0), 0, 255).astype(np.uint8)
    c = (kernel.shape[-1] - 1) // 2
    return y8, canvas[c : c + y.shape[0], c : c + y.shape[1]]
