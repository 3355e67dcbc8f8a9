"""Prior loading API: safetensors + JSON only, frozen eval-mode nets, shipped checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from restoration.cld import CLD
from restoration.priors import PriorError, export_prior, load_prior, load_shipped
from restoration.score_net import build_eps_net

CLD_CFG = {"beta": 4.0, "mass": 0.25, "friction": 1.0, "gamma": 0.04, "t_min": 1e-3}


def _tiny(channels: int = 3) -> tuple[bytes, bytes]:
    net_cfg = {"channels": channels, "base": 8, "mults": [1, 2], "num_res_blocks": 1}
    net = build_eps_net(net_cfg, CLD_CFG, init_seed=0)
    with torch.no_grad():
        net.unet.conv_out.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    return export_prior(net, {"name": "mine", "net": net_cfg, "cld": CLD_CFG, "steps": 3})


def test_roundtrip_version_and_frozen_eval() -> None:
    weights, meta = _tiny()
    prior = load_prior(weights, meta)
    again = load_prior(weights, meta)
    assert prior.version == again.version and prior.version.startswith("mine-")
    assert len(prior.version) == len("mine-") + 12
    assert not prior.net.training
    assert all(not p.requires_grad for p in prior.net.parameters())
    assert prior.cld == CLD(**CLD_CFG)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 3, 20, 28, generator=g), torch.randn(2, 3, 20, 28, generator=g)
    t = torch.tensor([0.1, 0.7])
    s = prior.score(x, v, t)
    assert torch.equal(s, again.score(x, v, t))
    # score = -eps / L22 (docs/design.md §6)
    l22 = prior.cld.cholesky(t.double())[:, 1, 1].float()
    torch.testing.assert_close(s, -prior.eps(x, v, t) / l22[:, None, None, None])
    other_weights, _ = export_prior(build_eps_net(json.loads(meta)["net"], CLD_CFG, init_seed=9),
                                    {"name": "mine", "net": json.loads(meta)["net"],
                                     "cld": CLD_CFG})
    assert load_prior(other_weights, meta).version != prior.version


def test_bad_bytes_raise_prior_error() -> None:
    weights, meta = _tiny()
    with pytest.raises(PriorError):
        load_prior(weights, b"{not json")
    with pytest.raises(PriorError):
        load_prior(weights, json.dumps({"format": "pickle"}).encode())
    with pytest.raises(PriorError):
        load_prior(b"\x80\x04 pickled bytes", meta)
    _, meta1 = _tiny(channels=1)
    with pytest.raises(PriorError):
        load_prior(weights, meta1)  # weights of a 3-channel net, metadata of a 1-channel one
    with pytest.raises(PriorError):
        load_shipped("video")
    with pytest.raises(PriorError):
        export_prior(build_eps_net(json.loads(meta)["net"], CLD_CFG), {"name": "x"})


@pytest.mark.parametrize(("name", "channels", "sizes"),
                         [("image", 3, [(64, 64), (96, 160)]), ("kernel", 1, [(31, 31)])])
def test_load_shipped_returns_working_prior(name: str, channels: int, sizes: list) -> None:
    import hashlib

    from restoration.priors import shipped_bytes

    prior = load_shipped(name)
    weights, _ = shipped_bytes(name)
    meta = prior.meta
    assert meta["name"] == name and prior.channels == channels
    assert meta["sha256"] == hashlib.sha256(weights).hexdigest()
    assert prior.version == f"{name}-{meta['sha256'][:12]}"
    assert meta["steps"] > 0 and meta["wall_time_s"] > 0 and meta["git_commit"]
    assert "project-generated" in meta["data"]["source"]
    assert prior.device == torch.device("cpu") and not prior.net.training
    assert len(weights) <= 20 * 2**20
    g = torch.Generator().manual_seed(3)
    for h, w in sizes:
        x0 = torch.rand(2, channels, h, w, generator=g) * 2 - 1
        t = torch.tensor([0.05, 0.5], dtype=torch.float64)
        p = prior.cld.perturb(x0, t, g)
        s = prior.score(p.x, p.v, t)
        assert s.shape == x0.shape and torch.isfinite(s).all()
        # The trained net must differ from its zero-initialised (Gaussian-base) start.
        base = prior.net.gaussian_eps(p.x, p.v, t.float())
        assert (prior.eps(p.x, p.v, t) - base).abs().mean() > 1e-3
