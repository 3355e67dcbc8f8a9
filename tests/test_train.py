"""HSM training: CLI end to end (train -> export -> load), resume, EMA, data iterators."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from flows.cli.train import TrainCLIError, load_config, main
from restoration.cld import CLD
from restoration.priors import load_prior
from restoration.score_net import build_eps_net
from restoration.train import (
    EMA,
    TrainConfig,
    TrainError,
    crop_batches,
    hsm_loss,
    load_training_state,
    new_state,
    training_state_bytes,
)

CLD_YAML = "cld: {beta: 4.0, mass: 0.25, friction: 1.0, gamma: 0.04, t_min: 0.001}\n"


def _kernel_config(tmp_path: Path, steps: int = 3) -> Path:
    cfg = tmp_path / "kernel.yaml"
    cfg.write_text(
        "prior: kernel\n"
        "net: {channels: 1, base: 8, mults: [1, 2], num_res_blocks: 1, mu_data: -0.8}\n"
        + CLD_YAML
        + "data: {size: 15, bank: 32, seed: 0, kinds: [motion, gaussian]}\n"
        f"train: {{steps: {steps}, batch_size: 4, warmup_steps: 2, checkpoint_every: 2,"
        " log_every: 1}\n"
    )
    return cfg


def _image_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "image.yaml"
    cfg.write_text(
        "prior: image\n"
        "net: {channels: 3, base: 8, mults: [1, 2], num_res_blocks: 1}\n"
        + CLD_YAML
        + "data: {n_products: 4, render_size: 40, crop: 32, seed: 0}\n"
        "train: {steps: 2, batch_size: 2, warmup_steps: 1, checkpoint_every: 1, log_every: 1}\n"
    )
    return cfg


def _run(cfg: Path, prior: str, out: Path, cache: Path, *extra: str) -> int:
    return main(["--prior", prior, "--config", str(cfg), "--out", str(out), "--cache-dir",
                 str(cache), "--threads", "1", "--no-progress", "--device", "cpu", *extra])


def _probe(channels: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, channels, size, size, generator=g)
    v = torch.randn(2, channels, size, size, generator=g)
    return x, v, torch.tensor([0.05, 0.5])


def test_kernel_cli_train_export_load_same_outputs(tmp_path: Path) -> None:
    out, export = tmp_path / "run", tmp_path / "ship"
    assert _run(_kernel_config(tmp_path), "kernel", out, tmp_path / "cache",
                "--export-dir", str(export)) == 0
    for d in (out, export):
        assert (d / "kernel.safetensors").is_file() and (d / "kernel.json").is_file()
    assert (out / "loss.png").stat().st_size > 0
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + 3

    prior = load_prior((export / "kernel.safetensors").read_bytes(),
                       (export / "kernel.json").read_bytes())
    assert prior.meta["steps"] == 3 and prior.meta["name"] == "kernel"
    assert prior.meta["params"] == sum(p.numel() for p in prior.net.parameters())
    # The exported weights are the EMA weights of the resumable state.
    state = torch.load(io.BytesIO((out / "state.pt").read_bytes()), weights_only=True)
    cfg = load_config(_kernel_config(tmp_path))
    ema = build_eps_net(cfg.net, cfg.cld)
    ema.load_state_dict(state["ema"])
    x, v, t = _probe(1, 15)
    with torch.no_grad():
        expected = ema.eval()(x, v, t)
    assert torch.equal(prior.eps(x, v, t), expected)
    again = load_prior((out / "kernel.safetensors").read_bytes(),
                       (out / "kernel.json").read_bytes())
    assert torch.equal(again.score(x, v, t), prior.score(x, v, t))
    assert torch.isfinite(prior.score(x, v, t)).all()


def test_image_cli_renders_trains_and_caches(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    assert _run(_image_config(tmp_path), "image", out, cache) == 0
    banks = list(cache.glob("image-*.npy"))
    assert len(banks) == 1
    prior = load_prior((out / "image.safetensors").read_bytes(),
                       (out / "image.json").read_bytes())
    x, v, t = _probe(3, 40)
    s = prior.score(x, v, t)
    assert s.shape == x.shape and torch.isfinite(s).all()
    assert "project-generated" in prior.meta["data"]["source"]


def test_resume_continues_step_counter_and_matches_uninterrupted(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cfg = _kernel_config(tmp_path, steps=4)
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(cfg, "kernel", straight, cache)
    _run(cfg, "kernel", split, cache, "--steps", "2")
    assert load_prior((split / "kernel.safetensors").read_bytes(),
                      (split / "kernel.json").read_bytes()).meta["steps"] == 2
    _run(cfg, "kernel", split, cache)  # resumes at step 2, continues to 4
    rows = (split / "loss.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
    a = torch.load(io.BytesIO((straight / "state.pt").read_bytes()), weights_only=True)
    b = torch.load(io.BytesIO((split / "state.pt").read_bytes()), weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=0, rtol=0)


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prior: image\nnet: {}\n")
    with pytest.raises(TrainCLIError):
        load_config(bad)
    with pytest.raises(TrainCLIError):
        _run(_kernel_config(tmp_path), "image", tmp_path / "o", tmp_path / "c")
    with pytest.raises(TrainError):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(TrainError):
        TrainConfig(batch_size=0)


def test_ema_warmup_and_decay() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: d = min(0.999, 2 / 11)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 1 - 2 / 11))
    assert not ema.model.weight.requires_grad


def test_hsm_loss_is_per_sample_and_zero_for_exact_eps() -> None:
    cld = CLD()

    class Oracle(torch.nn.Module):
        """Returns the true eps_v by replaying the generator used inside hsm_loss."""

        def __init__(self, x0: torch.Tensor, seed: int):
            super().__init__()
            self.x0, self.seed = x0, seed

        def forward(self, x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            g = torch.Generator().manual_seed(self.seed)
            torch.rand(x.shape[0], generator=g, dtype=torch.float64)
            return cld.perturb(self.x0, t.double(), g).eps_v

    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    loss = hsm_loss(Oracle(x0, 5), cld, x0, torch.Generator().manual_seed(5))
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.zeros(3), atol=1e-6, rtol=0)
    zero = hsm_loss(lambda x, v, t: torch.zeros_like(x), cld, x0, torch.Generator().manual_seed(5))
    assert (zero > 0.5).all()  # eps_v ~ N(0, 1): mean square ~1 per sample


def test_crop_batches_shapes_ranges_and_dihedral() -> None:
    bank = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    it = crop_batches(bank, 64, 5, torch.Generator().manual_seed(0), transpose=True)
    batch = next(it)
    assert batch.shape == (64, 1, 5, 5) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    originals = bank.float() / 127.5 - 1
    variants = set()
    for b in batch:
        matches = [
            (i, k, tr)
            for i in range(2) for k in range(4) for tr in (False, True)
            if torch.equal(b[0], torch.rot90(originals[i, 0].T if tr else originals[i, 0], k))
        ]
        assert matches, "every crop is a dihedral image of a bank item"
        variants.add(matches[0][1:])
    assert len(variants) > 4
    with pytest.raises(TrainError):
        next(crop_batches(bank, 2, 6, torch.Generator()))


def test_state_bytes_roundtrip_weights_only() -> None:
    cfg = TrainConfig(steps=1, batch_size=2)
    net = build_eps_net({"channels": 1, "base": 8, "mults": [1], "num_res_blocks": 1},
                        {"beta": 4.0, "mass": 0.25, "friction": 1.0, "gamma": 0.04,
                         "t_min": 1e-3})
    state = new_state(net, cfg)
    state.step, state.losses = 7, [(7, 0.5)]
    data = training_state_bytes(state)
    other = new_state(build_eps_net({"channels": 1, "base": 8, "mults": [1],
                                     "num_res_blocks": 1},
                                    {"beta": 4.0, "mass": 0.25, "friction": 1.0,
                                     "gamma": 0.04, "t_min": 1e-3}), cfg)
    load_training_state(other, data)
    assert other.step == 7 and other.losses == [(7, 0.5)]
    assert torch.equal(other.generator.get_state(), state.generator.get_state())
    with pytest.raises(TrainError):
        load_training_state(other, b"not a checkpoint")


def test_x0_weighting_divides_by_k_squared_plus_floor() -> None:
    cld = CLD()
    net = build_eps_net({"channels": 1, "base": 8, "mults": [1], "num_res_blocks": 1,
                         "preconditioning": "x0"},
                        {"beta": 4.0, "mass": 0.25, "friction": 1.0, "gamma": 0.04,
                         "t_min": 1e-3}, init_seed=0)
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain = hsm_loss(net, cld, x0, torch.Generator().manual_seed(3))
    weighted = hsm_loss(net, cld, x0, torch.Generator().manual_seed(3), weighting="x0",
                        weight_floor=0.01)
    t = cld.t_min + (1 - cld.t_min) * torch.rand(4, generator=torch.Generator().manual_seed(3),
                                                 dtype=torch.float64)
    k2 = net.x0_loss_weight(t).float()
    torch.testing.assert_close(weighted, plain / (k2 + 0.01))
    with pytest.raises(TrainError):
        TrainConfig(loss_weighting="snr")


def test_lr_schedule_warmup_constant_cosine_decay() -> None:
    from restoration.train import lr_at

    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, decay_steps=40, lr_min_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(59, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-3)
    assert lr_at(80, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(99, cfg) < 1.2e-4
    assert [lr_at(s, cfg) for s in range(60, 100)] == sorted(
        [lr_at(s, cfg) for s in range(60, 100)], reverse=True)
    with pytest.raises(TrainError):
        TrainConfig(steps=10, decay_steps=11)


def test_crop_batches_ragged_bank_weights_and_offsets() -> None:
    """A list of differently sized images: crops come from inside each image, a zero-weight
    image is never drawn, and the stream is reproducible from the generator."""
    big = torch.zeros(1, 40, 30, dtype=torch.uint8)
    big[0, :, :] = torch.arange(30, dtype=torch.uint8)[None, :]  # column index as value
    small = torch.full((1, 12, 12), 255, dtype=torch.uint8)
    never = torch.full((1, 16, 16), 128, dtype=torch.uint8)
    bank = [big, small, never]
    it = crop_batches(bank, 256, 12, torch.Generator().manual_seed(3), weights=[0.5, 0.5, 0.0])
    batch = next(it)
    assert batch.shape == (256, 1, 12, 12)
    raw = ((batch + 1) * 127.5).round()
    assert not (raw == 128).any()  # the zero-weight image never appears
    from_small = (raw == 255).all(dim=(1, 2, 3))
    assert 80 < int(from_small.sum()) < 176  # ~ half of the crops
    starts = {int(r[0, 0].min()) for r in raw[~from_small]}
    assert min(starts) == 0 and max(starts) == 30 - 12  # offsets span the whole valid range
    again = next(crop_batches(bank, 256, 12, torch.Generator().manual_seed(3),
                              weights=[0.5, 0.5, 0.0]))
    torch.testing.assert_close(batch, again, atol=0, rtol=0)
    with pytest.raises(TrainError):
        next(crop_batches([big, small], 2, 13, torch.Generator()))
    with pytest.raises(TrainError):
        next(crop_batches(bank, 2, 12, torch.Generator(), weights=[1.0, 0.0]))


def test_mixed_sources_warm_start_keeps_parent_weights(tmp_path: Path) -> None:
    """`data.sources` (scene + native renders) trains; `--init-from` a parent export starts
    from exactly its weights (0 steps -> the same EMA export) and records its provenance."""
    cache = tmp_path / "cache"
    parent = tmp_path / "parent"
    assert _run(_image_config(tmp_path), "image", parent, cache) == 0
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(
        "prior: image\n"
        "net: {channels: 3, base: 8, mults: [1, 2], num_res_blocks: 1}\n"
        + CLD_YAML
        + "data:\n  crop: 32\n  sources:\n"
        "    - {kind: scene, n_products: 2, render_size: 40, seed: 0, weight: 0.5}\n"
        "    - {kind: native, n_renders: 2, seed: 200000, size: 72, weight: 0.5}\n"
        "train: {steps: 2, batch_size: 2, warmup_steps: 1, checkpoint_every: 1, log_every: 1}\n"
    )
    child = tmp_path / "child"
    assert _run(cfg, "image", child, cache, "--init-from",
                str(parent / "image.safetensors"), "--steps", "0") == 0
    assert len(list(cache.glob("native-*.npz"))) == 1
    p = load_prior((parent / "image.safetensors").read_bytes(), (parent / "image.json").read_bytes())
    c = load_prior((child / "image.safetensors").read_bytes(), (child / "image.json").read_bytes())
    assert c.version == p.version  # identical weights
    assert c.meta["init_from"]["version"] == p.version and c.meta["init_from"]["steps"] == 2
    assert _run(cfg, "image", child, cache) == 0  # resumes (init ignored), trains 2 steps
    c2 = load_prior((child / "image.safetensors").read_bytes(), (child / "image.json").read_bytes())
    assert c2.meta["steps"] == 2 and c2.version != p.version
    assert c2.meta["init_from"]["version"] == p.version
    with pytest.raises(TrainCLIError):
        _run(cfg, "image", tmp_path / "x", cache, "--init-from", str(tmp_path / "none.safetensors"))


def test_photo_source_scales_jitters_and_refuses_the_validation_sets(tmp_path: Path) -> None:
    """The 'photos' data source: every image at each scale that still fits a crop, plus seeded
    colour-jittered copies; LIVE1 / BSD68 (the validation sets) are refused."""
    import numpy as np
    from PIL import Image

    from flows.cli.train import photo_bank

    (tmp_path / "SetA").mkdir()
    Image.fromarray(np.full((200, 300, 3), 120, np.uint8)).save(tmp_path / "SetA" / "a.png")
    Image.fromarray(np.full((90, 90), 60, np.uint8)).save(tmp_path / "SetA" / "b.png")  # grey
    spec = {"folders": ["SetA"], "scales": [1.0, 0.5], "jitter": 1, "seed": 3}
    bank = photo_bank(spec, tmp_path, crop=64)
    # a.png at 1.0 and 0.5 (100 x 150), b.png at 1.0 only (45 px < 64): 3 images x (1 + 1 jitter)
    assert [tuple(t.shape) for t in bank] == [(3, 200, 300)] * 2 + [(3, 100, 150)] * 2 + [(3, 90, 90)] * 2
    assert all(t.dtype == torch.uint8 for t in bank)
    assert not torch.equal(bank[0], bank[1])  # the jittered copy differs
    again = photo_bank(spec, tmp_path, crop=64)
    assert all(torch.equal(x, y) for x, y in zip(bank, again, strict=True))  # seeded
    with pytest.raises(TrainCLIError, match="validation"):
        photo_bank({"folders": ["LIVE1"]}, tmp_path, crop=64)
    with pytest.raises(TrainCLIError, match="--photos"):
        photo_bank(spec, None, crop=64)
