"""The bench's `native` suites: checkout frames at camera size whose codes must read.

``checkout-restore bench --suites native`` (= ``native-motion,native-gaussian``) generates frames
with :func:`restoration.synthetic.coded.native_frame` (longest side 256-640 px in 4:3 / 1:1 /
3:4, an EAN-13 at 2-3 px per module, a QR code on half of them, a price; motion or Gaussian
kernels of 9-41 px; noise std 0.005-0.02) in the sidecar layout plus ``<id>.codes.json`` with the
true code texts. The runner counts a code as read only when zxing-cpp returns its true text
(:func:`restoration.codes.decode_codes`), for the blurred input, every method's output and the
sharp truth.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from restoration.rng import generator_for
from restoration.synthetic.coded import native_frame
from storage.images import encode_png
from storage.sidecars import save_kernel

NATIVE_SUITES: dict[str, str] = {"native-motion": "motion", "native-gaussian": "gaussian"}
"""suite name -> kernel kind."""
ALIASES: dict[str, tuple[str, ...]] = {"native": tuple(NATIVE_SUITES)}
CODES_SUFFIX = ".codes.json"
SEED_OFFSET = 500_000  # native frames draw their own held-out scene seeds


def native_files(seed_start: int, fonts: tuple[str, ...], suite: str, index: int
                 ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One native frame and its sidecars as encoded bytes, and its manifest record (deterministic)."""
    kind = NATIVE_SUITES[suite]
    seed = seed_start + SEED_OFFSET + list(NATIVE_SUITES).index(suite) * 10_000 + index
    f = native_frame(generator_for(f"bench/{suite}/{index}/{seed}"), seed, kind, fonts)
    fid = f"{suite}/f{index:03d}"
    codes = {"codes": list(f.codes), "price": f.price, "noise_sigma": f.noise_sigma}
    files = {
        f"{fid}.png": encode_png(f.blurred),
        f"{fid}.sharp.png": encode_png(f.sharp),
        f"{fid}.kernel.npy": save_kernel(np.asarray(f.kernel)),
        f"{fid}{CODES_SUFFIX}": (json.dumps(codes, indent=1, sort_keys=True) + "\n").encode(),
    }
    h, w = f.blurred.shape[:2]
    record = {"key": f"{fid}.png", "suite": suite, "seed": seed, "kernel_size": int(f.kernel.shape[0]),
              "coverage": None, "height": h, "width": w, "noise_sigma": f.noise_sigma}
    return files, record
