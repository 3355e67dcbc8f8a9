"""Fully convolutional U-Net score networks for CLD priors.

The network sees the CLD state u_t = (x_t, v_t) (concatenated, 2C channels) and the diffusion
time t, and predicts the velocity noise eps_v (C channels). With the "l_t = 1/L22"
parameterisation of the CLD paper the velocity score is s = -eps_v / L22(t) (docs/design.md §6).

`ScoreUNet` is the bare U-Net. `CLDEpsNet` wraps it with the CLD paper's "mixed score"
(Dockhorn et al. 2021, Sec. 3.3): the analytic eps_v of a Gaussian data distribution
N(0, sigma_data^2 I) is added to the U-Net output, so the network only learns the residual.
This matters most at small t, where eps_v ~ v_t / L22(t) has a large, t-dependent gain that a
small network would otherwise have to learn from scratch.

Both are conv-only (no attention) for CPU speed, and run at any spatial size: inputs are padded
(reflect when possible, else replicate) up to a multiple of the down-sampling factor and the
output is cropped back, so a prior trained on 64x64 patches runs on 128x128, 96x160 or a 31x31
kernel canvas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restoration.cld import CLD


class ScoreNetError(ValueError):
    """Raised for invalid network configurations or inputs."""


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000 as in DDPM), shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = 1000.0 * t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int, max_groups: int) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with FiLM (scale, shift) from the time embedding."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out, groups), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.silu(self.norm1(h)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        out = self.norm2(out) * (1 + scale) + shift
        out = self.conv2(self.drop(F.silu(out)))
        return self.skip(h) + out


class ScoreUNet(nn.Module):
    """U-Net on concat[x, v] (2C channels) and t, returning C channels (eps_v).

    Args:
        channels: C, channels of x (3 for RGB images, 1 for kernels).
        base: width of the first level.
        mults: width multiplier per level; len(mults) - 1 down-samplings by 2.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        emb_dim: time-embedding width (default 4 * base).
        groups: maximum number of GroupNorm groups.
        dropout: dropout inside residual blocks.
    """

    def __init__(
        self,
        channels: int = 3,
        base: int = 32,
        mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        emb_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if channels < 1 or base < 1 or num_res_blocks < 1 or not mults or min(mults) < 1:
            raise ScoreNetError(
                f"bad U-Net config: channels={channels} base={base} mults={tuple(mults)} "
                f"num_res_blocks={num_res_blocks}"
            )
        self.channels = channels
        self.factor = 2 ** (len(mults) - 1)
        emb_dim = emb_dim or 4 * base
        self.base = base
        self.t_embed = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(2 * channels, base, 3, padding=1)

        widths = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_ch = [base]
        c = base
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(c, w, emb_dim, groups, dropout))
                c = w
                skip_ch.append(c)
            self.down.append(blocks)
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skip_ch.append(c)
        self.mid = nn.ModuleList(
            [ResBlock(c, c, emb_dim, groups, dropout), ResBlock(c, c, emb_dim, groups, dropout)]
        )
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(c + skip_ch.pop(), w, emb_dim, groups, dropout))
                c = w
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out = nn.GroupNorm(_groups(c, groups), c)
        self.conv_out = nn.Conv2d(c, channels, 3, padding=1)
        # Zero-init: the network starts as "residual = 0" (with CLDEpsNet: the Gaussian score).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _pad(self, h: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        height, width = h.shape[-2:]
        ph = (-height) % self.factor
        pw = (-width) % self.factor
        if ph == 0 and pw == 0:
            return h, height, width
        mode = "reflect" if ph < height and pw < width else "replicate"
        return F.pad(h, (0, pw, 0, ph), mode=mode), height, width

    def forward(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict eps_v for states (x, v) of shape (B, C, H, W) at times t of shape (B,)."""
        if x.ndim != 4 or x.shape != v.shape or x.shape[1] != self.channels:
            raise ScoreNetError(
                f"expected x, v of shape (B, {self.channels}, H, W), got {tuple(x.shape)} "
                f"and {tuple(v.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ScoreNetError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        h, height, width = self._pad(torch.cat([x, v], dim=1))
        emb = self.t_embed(timestep_embedding(t, self.base).to(h.dtype))

        h = self.conv_in(h)
        skips = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h)))
        return out[..., :height, :width]


PRECONDITIONINGS = ("none", "x0")


class CLDEpsNet(nn.Module):
    """eps_v model = analytic Gaussian eps_v ("mixed score", CLD paper Sec. 3.3) + U-Net.

    For data x0 ~ N(mu_data, sigma_data^2 I) per pixel and v0 ~ N(0, gamma M), u_t is Gaussian
    with covariance Sigma'_t = sigma_data^2 D_t e1 e1^T D_t^T + Sigma_t, so the velocity score is
    -(Sigma'_t^{-1} (u_t - D_t (mu_data, 0)))_v and eps_v = -L22 * score. The U-Net adds the
    non-Gaussian residual. Constructed from numbers only (the CLD parameters).

    preconditioning:
      "none": eps_v = eps_gauss(u) + U(x_t, v_t, t).
      "x0": the U-Net is a well-scaled x0 denoiser (EDM-style preconditioning, derived for CLD).
        Given x0, eps = L^-1 (u - D_t (x0, 0)), so E[eps_v | u] depends on the data only through
        E[x0 | u]; and u carries x0 only through the sufficient statistic
        x~ = a_t . u = x0 + sigma_eff(t) n (a_t = Sigma_t^-1 d / d^T Sigma_t^-1 d, d = D_t e1).
        The U-Net sees [x~ / sqrt(sigma_data^2 + sigma_eff^2), z] (z: the x0-free, unit-variance
        complement of x~; an invertible, t-dependent whitening of (x_t, v_t)) and predicts F with
        x0_hat = m_gauss(x~) + sigma_post(t) F (m_gauss, sigma_post: Gaussian posterior mean/std).
        Since x0_hat is linear in the score with slope 1/d_t (CVSA Prop. 4.2),
        eps_v = eps_gauss(u) - L22 d_t sigma_post F (k_t = L22 d_t sigma_post is O(1) for all t).
    """

    def __init__(
        self,
        unet: ScoreUNet,
        cld: CLD | None = None,
        sigma_data: float = 0.5,
        mu_data: float = 0.0,
        preconditioning: str = "none",
    ):
        super().__init__()
        if sigma_data <= 0:
            raise ScoreNetError(f"sigma_data must be > 0, got {sigma_data}")
        if preconditioning not in PRECONDITIONINGS:
            raise ScoreNetError(
                f"preconditioning must be one of {PRECONDITIONINGS}, got {preconditioning!r}"
            )
        self.unet = unet
        self.cld = cld if cld is not None else CLD()
        self.sigma_data = float(sigma_data)
        self.mu_data = float(mu_data)
        self.preconditioning = preconditioning

    @property
    def channels(self) -> int:
        return self.unet.channels

    def gaussian_eps(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_v implied by the exact score of Gaussian data N(mu_data, sigma_data^2)."""
        t64 = t.double()
        d = self.cld.mean_matrix(t64)  # (B, 2, 2)
        cov = self.cld.covariance(t64).clone()
        d1 = d[:, :, 0]  # D_t e1: (B, 2)
        cov = cov + self.sigma_data**2 * d1[:, :, None] * d1[:, None, :]
        l22 = self.cld.cholesky(t64)[:, 1, 1]
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
        # v-row of the inverse of the 2x2 marginal covariance.
        inv_vx = -cov[:, 1, 0] / det
        inv_vv = cov[:, 0, 0] / det
        cx = (l22 * inv_vx).float()[:, None, None, None]
        cv = (l22 * inv_vv).float()[:, None, None, None]
        mx = (self.mu_data * d1[:, 0]).float()[:, None, None, None]
        mv = (self.mu_data * d1[:, 1]).float()[:, None, None, None]
        return cx * (x.float() - mx) + cv * (v.float() - mv)

    def x0_coefficients(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-time float64 coefficients of the "x0" preconditioning, each (B,)."""
        t64 = t.double()
        sig = self.cld.covariance(t64)
        d1 = self.cld.mean_matrix(t64)[:, :, 0]
        w = torch.linalg.solve(sig, d1[:, :, None])[:, :, 0]  # Sigma^-1 d
        s2 = 1.0 / (d1 * w).sum(dim=1)  # sigma_eff^2
        a = w * s2[:, None]  # x~ = a . u
        perp = torch.stack([d1[:, 1], -d1[:, 0]], dim=1)  # perp . d = 0: x0-free
        z_std = torch.sqrt(torch.einsum("bi,bij,bj->b", perp, sig, perp))
        sd2 = self.sigma_data**2
        _, _, d_t = self.cld.x0_hat_coefficients(t64)
        l22 = self.cld.cholesky(t64)[:, 1, 1]
        post = torch.sqrt(sd2 * s2 / (sd2 + s2))
        return {
            "ax": a[:, 0], "av": a[:, 1],
            "zx": perp[:, 0] / z_std, "zv": perp[:, 1] / z_std,
            "c_in": 1.0 / torch.sqrt(sd2 + s2),
            "k": l22 * d_t * post,
            "sigma_eff": torch.sqrt(s2),
            "sigma_post": post,
        }

    def x0_loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """k_t^2 = (L22 d_t sigma_post)^2: eps_v-loss weight of a unit x0-space error (B,)."""
        return self.x0_coefficients(t)["k"] ** 2

    def forward(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predict eps_v (float32) for (x_t, v_t) at times t (B,)."""
        base = self.gaussian_eps(x, v, t)
        if self.preconditioning == "none":
            return base + self.unet(x, v, t).float()
        c = {k: val.float()[:, None, None, None] for k, val in self.x0_coefficients(t).items()}
        xf, vf = x.float(), v.float()
        x_tilde = c["ax"] * xf + c["av"] * vf
        z = c["zx"] * xf + c["zv"] * vf
        f = self.unet(c["c_in"] * (x_tilde - self.mu_data), z, t).float()
        return base - c["k"] * f


def build_eps_net(net_cfg: dict, cld_cfg: dict, init_seed: int | None = None) -> CLDEpsNet:
    """Build a CLDEpsNet from the plain dicts stored in a checkpoint's JSON metadata.

    With `init_seed` the initial weights are reproducible: they are drawn inside
    `torch.random.fork_rng`, so the caller's global RNG state is left untouched.
    """
    if init_seed is None:
        return _build(net_cfg, cld_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return _build(net_cfg, cld_cfg)


def _build(net_cfg: dict, cld_cfg: dict) -> CLDEpsNet:
    unet = ScoreUNet(
        channels=int(net_cfg["channels"]),
        base=int(net_cfg["base"]),
        mults=tuple(int(m) for m in net_cfg["mults"]),
        num_res_blocks=int(net_cfg["num_res_blocks"]),
        emb_dim=int(net_cfg["emb_dim"]) if net_cfg.get("emb_dim") else None,
        groups=int(net_cfg.get("groups", 8)),
        dropout=float(net_cfg.get("dropout", 0.0)),
    )
    return CLDEpsNet(
        unet,
        CLD(
            beta=float(cld_cfg["beta"]),
            mass=float(cld_cfg["mass"]),
            friction=float(cld_cfg["friction"]),
            gamma=float(cld_cfg["gamma"]),
            t_min=float(cld_cfg["t_min"]),
        ),
        sigma_data=float(net_cfg.get("sigma_data", 0.5)),
        mu_data=float(net_cfg.get("mu_data", 0.0)),
        preconditioning=str(net_cfg.get("preconditioning", "none")),
    )


def param_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
