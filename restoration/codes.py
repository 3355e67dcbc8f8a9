"""Barcode / QR read-out: the downstream question a checkout frame has to answer.

`decode_codes` runs zxing-cpp (1-D and 2-D formats, rotations, inverted codes, its own
downscaled passes) on a frame's luma and returns the decoded texts. Checkout crops show codes at
about 2 px per module, where zxing-cpp's default local-average binariser is marginal (sharp
renders of EAN-13 at 2.0-2.2 px/module fail it about one time in five), so it reads three ways,
as a scanning app retrying would: the frame as is, with a fixed threshold, and upscaled 2x
(bicubic); the result is the union (each read is checksum-validated by zxing-cpp). The pipeline reads every
frame before and after restoration (an operator's first question, answered without ground
truth); the bench counts a code as read only when its true text comes back.
"""

from __future__ import annotations

import numpy as np

from restoration.kernel_ops import LUMA

_LUMA_NP = np.array(LUMA)


def decode_codes(image: np.ndarray) -> tuple[str, ...]:
    """Sorted, distinct texts of the codes zxing-cpp reads in an (H, W, 3) or (H, W) uint8 frame."""
    import zxingcpp  # imported here: a compiled extension only the read-out needs

    if image.ndim == 3:
        gray = np.clip(np.rint(image[..., :3].astype(np.float64) @ _LUMA_NP), 0, 255).astype(np.uint8)
    elif image.ndim == 2:
        gray = np.asarray(image, np.uint8)
    else:
        raise ValueError(f"expected an (H, W, 3) or (H, W) image, got shape {image.shape}")
    from PIL import Image

    gray = np.ascontiguousarray(gray)
    h, w = gray.shape
    up = np.asarray(Image.fromarray(gray).resize((2 * w, 2 * h), Image.Resampling.BICUBIC))
    found = [
        *zxingcpp.read_barcodes(gray),
        *zxingcpp.read_barcodes(gray, binarizer=zxingcpp.Binarizer.FixedThreshold),
        *zxingcpp.read_barcodes(up),
    ]
    return tuple(sorted({r.text for r in found if r.valid and r.text}))


def codes_agree(before: tuple[str, ...], after: tuple[str, ...]) -> bool:
    """True when every code read in the input is read, with the same text, in the output (codes
    gained by restoration are fine; a code lost or changed is not)."""
    return set(before) <= set(after)
