"""Loading and exporting CLD velocity-score priors (safetensors weights + JSON metadata).

Loading never unpickles: weights come from safetensors and metadata from JSON. The only
read this package does itself is `load_shipped`, which reads the checkpoints shipped inside
the package via `importlib.resources` (package data, not a user path); every other checkpoint
is passed in as bytes by the caller (flows/ reads the files), in line with docs/design.md §2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from restoration.cld import CLD
from restoration.score_net import CLDEpsNet, build_eps_net

FORMAT = "checkout-restore-prior/1"
SHIPPED = ("image", "kernel")


class PriorError(ValueError):
    """Raised for unknown priors or malformed checkpoint bytes."""


@dataclass(frozen=True)
class Prior:
    """A trained CLD velocity-score prior.

    Attributes:
        name: "image", "kernel" or a user name from the metadata.
        cld: the CLD process the network was trained for.
        net: the eps_v network (eval mode, parameters frozen).
        meta: the JSON metadata (net/CLD config, data, training record).
        version: "<name>-<sha256 of the weights, 12 hex>", for provenance ledgers.
    """

    name: str
    cld: CLD
    net: CLDEpsNet
    meta: dict[str, Any]
    version: str

    @property
    def channels(self) -> int:
        return self.net.channels

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def eps(self, x_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted velocity noise eps_v (float32), inputs in the prior's [-1, 1] space."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.net(x_t, v_t, t)

    def score(self, x_t: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Velocity score s = -eps_v / L22(t) (docs/design.md §6); x_t, v_t (B, C, H, W), t (B,)."""
        t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.cld.score_from_eps(self.eps(x_t, v_t, t), t.double())


def export_prior(net: CLDEpsNet, meta: dict[str, Any]) -> tuple[bytes, bytes]:
    """(safetensors bytes, JSON bytes) for `net`'s weights and `meta` (must hold net/cld/name)."""
    for key in ("name", "net", "cld"):
        if key not in meta:
            raise PriorError(f"prior metadata needs '{key}'")
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    weights = st_save(tensors, metadata={"format": FORMAT})
    full = {"format": FORMAT, **meta, "sha256": hashlib.sha256(weights).hexdigest()}
    return weights, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode()


def load_prior(
    safetensors_bytes: bytes, json_bytes: bytes, device: torch.device | str = "cpu"
) -> Prior:
    """Build a Prior from checkpoint bytes (safetensors + JSON; nothing is unpickled)."""
    try:
        meta = json.loads(json_bytes.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PriorError(f"prior metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PriorError(f"prior metadata format must be {FORMAT!r}")
    try:
        tensors = st_load(safetensors_bytes)
    except Exception as exc:  # safetensors raises its own error types
        raise PriorError(f"cannot read prior weights: {exc}") from exc
    cld_cfg = meta["cld"]
    cld = CLD(
        beta=float(cld_cfg["beta"]),
        mass=float(cld_cfg["mass"]),
        friction=float(cld_cfg["friction"]),
        gamma=float(cld_cfg["gamma"]),
        t_min=float(cld_cfg["t_min"]),
    )
    net = build_eps_net(meta["net"], cld_cfg)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise PriorError(f"weights do not match the network config: {exc}") from exc
    net = net.to(device).eval()
    _freeze(net)
    digest = hashlib.sha256(safetensors_bytes).hexdigest()[:12]
    name = str(meta["name"])
    return Prior(name=name, cld=cld, net=net, meta=meta, version=f"{name}-{digest}")


def _freeze(net: nn.Module) -> None:
    for p in net.parameters():
        p.requires_grad_(False)


def shipped_bytes(name: str) -> tuple[bytes, bytes]:
    """The shipped checkpoint files for `name` (package data via importlib.resources)."""
    if name not in SHIPPED:
        raise PriorError(f"unknown shipped prior {name!r}; choose one of {SHIPPED}")
    root = resources.files("restoration") / "checkpoints"
    st, js = root / f"{name}.safetensors", root / f"{name}.json"
    if not (st.is_file() and js.is_file()):
        raise PriorError(f"shipped prior {name!r} is missing from the installed package")
    return st.read_bytes(), js.read_bytes()


def load_shipped(name: str, device: torch.device | str = "cpu") -> Prior:
    """Load the shipped "image" or "kernel" prior (CPU by default, eval mode, frozen)."""
    return load_prior(*shipped_bytes(name), device=device)
