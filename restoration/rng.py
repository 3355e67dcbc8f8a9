"""Explicit, reproducible randomness: generators seeded from stable strings, drawn per sample.

A frame restored alone must equal it restored in a batch (docs/design.md §3), so a batch may carry one
generator per sample; `randn` then draws each sample's noise from its own stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def generator_for(key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded from sha256(key) (e.g. object key + config hash); no global state."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


def randn(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of `shape`; with a sequence of generators, sample i uses generator[i]."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    return torch.cat(
        [torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator]
    )
