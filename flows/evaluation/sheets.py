"""Contact sheets of the synthetic training data: product renders and blur kernels.

Writes docs/contact_sheet.png and docs/kernels_sheet.png (``python -m flows.evaluation.sheets``). Fonts: every
system font (:data:`flows.fonts.SYSTEM_FONT_GLOBS`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from flows.fonts import SYSTEM_FONT_GLOBS, find_fonts
from restoration.kernels import KINDS, motion_kernel, sample_kernels
from restoration.synthetic import HELDOUT_SEED_START, render_product


def grid(images: Sequence[np.ndarray], cols: int, pad: int = 2, fill: int = 255) -> Image.Image:
    """Tile equally sized uint8 (H, W, 3) images into one picture."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (fill,) * 3)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet.paste(Image.fromarray(im), (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


def contact_sheet(
    path: Path, fonts: Sequence[str], rows: int = 5, cols: int = 8, size: int = 128,
    first_seed: int = HELDOUT_SEED_START,
) -> Path:
    images = [render_product(first_seed + i, size, fonts) for i in range(rows * cols)]
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, cols).save(path, optimize=True)
    return path


def _kernel_image(k: torch.Tensor, scale: int) -> np.ndarray:
    a = k.numpy()
    a = a / max(float(a.max()), 1e-12)
    img = (np.sqrt(a) * 255).astype(np.uint8)  # sqrt display: dim parts stay visible
    img = np.kron(img, np.ones((scale, scale), np.uint8))
    return np.repeat(img[..., None], 3, axis=2)


def kernels_sheet(path: Path, size: int = 33, per_row: int = 10, scale: int = 3,
                  seed: int = 0) -> Path:
    """One row per kind, then rows of motion kernels at intensity 0, 0.5, 1 (labelled)."""
    g = torch.Generator().manual_seed(seed)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for kind in KINDS:
        ks = sample_kernels(per_row, size, g, kinds=(kind,))
        rows.append((kind, [_kernel_image(k[0], scale) for k in ks]))
    for inten in (0.0, 0.5, 1.0):
        ks = [motion_kernel(size, inten, g) for _ in range(per_row)]
        rows.append((f"motion i={inten:g}", [_kernel_image(k, scale) for k in ks]))
    label_w, cell = 110, size * scale + 2
    sheet = Image.new("RGB", (label_w + per_row * cell, len(rows) * cell), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (name, imgs) in enumerate(rows):
        draw.text((4, r * cell + cell // 2), name, fill=(255, 255, 255), anchor="lm")
        for c, im in enumerate(imgs):
            sheet.paste(Image.fromarray(im), (label_w + c * cell, r * cell + 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args(argv)
    fonts = find_fonts(SYSTEM_FONT_GLOBS)
    print(f"{len(fonts)} fonts")
    print(contact_sheet(args.out / "contact_sheet.png", fonts, size=args.size))
    print(kernels_sheet(args.out / "kernels_sheet.png"))


if __name__ == "__main__":
    main()
