"""The fonts the synthetic renders use: one default and one lookup for every command (bench,
table1, training data, model card, contact sheets). restoration/ never touches the file system,
so the renderers take the font paths this returns."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

DEFAULT_FONT_GLOB = "/usr/share/fonts/truetype/dejavu/*.ttf"  # Debian: fonts-dejavu-core
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
SYSTEM_FONT_GLOBS = tuple(f"{d}/**/*.{ext}" for d in FONT_DIRS for ext in ("ttf", "otf", "TTF", "OTF"))


def find_fonts(globs: str | Sequence[str] = DEFAULT_FONT_GLOB) -> list[str]:
    """Font files matching ``globs`` (``~`` expanded, ``**`` recursive), sorted and without
    repeats so renders are reproducible; empty when none match (the renderer then falls back to
    Pillow's built-in font, so callers that need real fonts check)."""
    patterns = (globs,) if isinstance(globs, str) else tuple(globs)
    return sorted({f for g in patterns for f in glob.glob(os.path.expanduser(g), recursive=True)})
