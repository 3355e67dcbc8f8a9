"""Reference numbers of restoration/ on tiny seeded problems (issue 19: the refactor must not move
them). ``compute()`` runs every sampler, solver and kernel routine once; ``tests/data/
golden_restoration.pt`` holds what it returned before the restoration core was consolidated.

Regenerate only for a change that is *meant* to change pixels (and bump
``restoration.settings.ALGORITHM_VERSION`` with it):
``PYTHONPATH=$PWD:$PWD/tests python -m golden_restoration`` (tests/ is on pytest's path, not a package).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

GOLDEN = Path(__file__).parent / "data" / "golden_restoration.pt"


def _frame(seed: int, c: int, h: int, w: int) -> Tensor:
    """A blocky colour frame on [-1, 1] (edges make kernels identifiable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, c, h, w, dtype=torch.float64)
    for _ in range(14):
        a = torch.randint(0, h - 6, (1,), generator=g).item()
        b = torch.randint(0, w - 6, (1,), generator=g).item()
        dh, dw = torch.randint(3, 12, (2,), generator=g).tolist()
        x[..., a : a + dh, b : b + dw] = torch.rand(c, 1, 1, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return x


def _blind_cases(out: dict[str, Tensor]) -> None:
    from samplers import blind

    from restoration.analytic import gaussian_prior_score
    from restoration.cld import CLD
    from restoration.kernel_ops import to_prior
    from restoration.kernels import gaussian_kernel, motion_kernel
    from restoration.operators import blur

    cld = CLD()
    k = 7
    truth = motion_kernel(k, 0.5, torch.Generator().manual_seed(3)).double()[None, None]
    x = _frame(1, 3, 30 + k - 1, 28 + k - 1)
    y = blur(x, truth) + 0.02 * torch.randn(1, 3, 30, 28, generator=torch.Generator().manual_seed(2),
                                             dtype=torch.float64)
    y = torch.cat([y, y.flip(-1)]).float()
    mask = torch.ones(2, 1, 30, 28)
    mask[1, :, 5:15, 3:12] = 0
    image_score = gaussian_prior_score(cld, 0.0, 0.4)
    scores = {
        n: gaussian_prior_score(cld, to_prior(gaussian_kernel(n, 1.0, 0.7)[None, None]), 0.2) for n in (5, 7)
    }
    init = gaussian_kernel(k, 1.2, 0.8, 0.3)[None, None].expand(2, 1, k, k).clone()

    def run(**kw: object) -> None:
        name = str(kw.pop("name"))
        res = blind(
            y, mask, image_score, scores[int(kw.get("kernel_canvas") or k)], image_cld=cld, kernel_cld=cld,
            kernel_size=k, steps=6,
            noise_sigma=torch.tensor([0.04, 0.05]),
            generator=[torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)], **kw,
        )  # fmt: skip
        out[f"{name}/x"], out[f"{name}/kernel"] = res.x, res.kernel
        out[f"{name}/residual"] = res.diagnostics["residual_ratio"]

    run(name="blind-known", known_kernel=truth.float().expand(2, 1, k, k))
    run(name="blind-prior", kernel_t_start=1.0, kernel_canvas=5, kernel_every=2)
    run(name="blind-anchored", kernel_init=init, kernel_t_start=0.3, kernel_guidance=0.5)
    run(name="blind-scoreshift", kernel_init=init, renoise=None, grid_power=1.0, grad_reg=0.0)
    run(name="blind-paper", method="paper", image_guidance=0.01, kernel_guidance=0.01)


def _task_cases(out: dict[str, Tensor]) -> None:
    from restoration.analytic import gaussian_prior_score
    from restoration.cld import CLD
    from restoration.cvsa import ScorePrior, restore, restore_proximal
    from restoration.settings import GuidedSettings, ProximalSettings
    from restoration.tasks import TASK_NAMES, degrade, problem, task_params, truth_canvas_size

    cld = CLD()
    score = gaussian_prior_score(cld, 0.0, 0.4)
    size = 32
    for task in TASK_NAMES:
        gens = [torch.Generator().manual_seed(20 + i) for i in range(2)]
        params = task_params(task, size, gens)
        side = truth_canvas_size(task, size)
        x = torch.cat([_frame(30 + i, 3, side, side) for i in range(2)]).float()
        y, _ = degrade(task, x, params, [torch.Generator().manual_seed(40 + i) for i in range(2)])
        prob = problem(task, y, params)
        out[f"{task}/y"] = y
        gens = [torch.Generator().manual_seed(50 + i) for i in range(2)]
        res = restore_proximal(prob, ScorePrior(score, cld), ProximalSettings(steps=5), gens)
        out[f"{task}/cvsa-prox"] = prob.crop(res.x)
        guided = ["literal", "dps"] + (["dmps"] if prob.linear else [])
        for guidance in guided:
            gens = [torch.Generator().manual_seed(60 + i) for i in range(2)]
            settings = GuidedSettings(4, guidance, 0.01 if guidance == "literal" else 1.0, 2.0)
            res = restore(prob, ScorePrior(score, cld), settings, gens)
            out[f"{task}/{guidance}"] = prob.crop(res.x)
            out[f"{task}/{guidance}/x0rms"] = res.diagnostics["x0_hat_residual_rms"]


def _classical_cases(out: dict[str, Tensor]) -> None:
    from restoration.classical import classical_blind, sparse_deconv, sparse_energy, wiener_deconv
    from restoration.kernel_choice import KERNEL_STRATEGIES, choose_kernel
    from restoration.kernels import motion_kernel
    from restoration.operators import blur

    k = 9
    truth = motion_kernel(k, 0.4, torch.Generator().manual_seed(5)).double()[None, None]
    x = _frame(7, 3, 48 + k - 1, 44 + k - 1)
    y = blur(x, truth) + 0.02 * torch.randn(1, 3, 48, 44, generator=torch.Generator().manual_seed(8),
                                             dtype=torch.float64)
    mask = torch.ones(1, 1, 48, 44, dtype=torch.float64)
    mask[..., 30:, :12] = 0
    xb, kb = classical_blind(y, mask, k, 0.04)
    out["classical/x"], out["classical/k"] = xb, kb
    out["classical/x-nomask"] = classical_blind(y.float(), None, k, 0.05)[0]
    out["wiener"] = wiener_deconv(y, truth, mask, 0.04)
    out["sparse"] = sparse_deconv(y, truth, mask, 0.04)
    xe, energy, ratio = sparse_energy(y, truth, mask, 0.04)
    out["energy/x"], out["energy/e"], out["energy/ratio"] = xe, energy, ratio
    choice = choose_kernel(y, mask, k, noise_sigma=0.04)
    out["choice/kernel"] = choice.kernel
    out["choice/scores"] = torch.tensor([[s[n] for n in sorted(s)] for s in choice.scores])
    for name, strategy in KERNEL_STRATEGIES.items():
        plan = strategy(y, mask, k, 0.04)
        for field in ("known_kernel", "kernel_init"):
            value = getattr(plan, field)
            if value is not None:
                out[f"strategy/{name}/{field}"] = value


def _kernel_cases(out: dict[str, Tensor]) -> None:
    from restoration import kernel_ops as kops
    from restoration import kernels as kern
    from restoration.physics import BlurMask

    g = torch.Generator().manual_seed(9)
    ks = kern.sample_kernels(6, 15, g)
    noisy = (ks + 0.01 * torch.rand(ks.shape, generator=g)).float()
    out["kern/sample"] = ks
    out["kern/project"] = kops.project(noisy)
    out["kern/from_prior"] = kops.from_prior(torch.rand(ks.shape, generator=g) * 2 - 1)
    out["kern/soft_project"] = kops.soft_project(noisy, 0.05)
    out["kern/soft_kernel"] = kops.soft_kernel(kops.to_prior(noisy), 0.02)
    out["kern/resample"] = kops.resample_kernel(noisy, 9)
    out["kern/mmg"] = kern.moment_matched_gaussian(noisy)
    x = _frame(11, 1, 30, 30).float()
    y = x[..., 3:-3, 3:-3]
    mask = torch.ones(1, 1, 24, 24)
    mask[..., :6, :6] = 0
    physics = BlurMask(y, (30, 30), 0.5, mask=mask, kernel=ks[:1, :, 4:11, 4:11].float())
    out["ls/kernel"] = physics.update_kernel(x, _delta(7), 1e-3, 15)
    rho = torch.full((1, 1, 1, 1), 0.3)
    out["prox/image"] = physics.data_consistency(x, rho, 0.08, 12)  # mu = 0.08 * 0.5^2 = 0.02


def _delta(size: int) -> Tensor:
    d = torch.zeros(1, 1, size, size)
    d[..., size // 2, size // 2] = 1.0
    return d


def _restorer_cases(out: dict[str, Tensor]) -> None:
    from flows.config import load_config
    from restoration.priors import load_shipped
    from restoration.service import FrameInput, FrameRestorer

    priors = (load_shipped("image"), load_shipped("kernel"))
    base = load_config("smoke").restoration.model_copy(
        update={"kernel_size": 9, "working_size": 32, "steps": 3, "tile_size": 64, "tile_overlap": 8,
                "guard": False}  # the sampler's numbers; the guard has its own tests (test_guard.py)
    )
    rng = np.random.default_rng(0)
    img = (np.clip(_frame(13, 3, 36, 40)[0].permute(1, 2, 0).numpy() * 0.5 + 0.5, 0, 1) * 255)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    mask = np.ones((36, 40), bool)
    mask[:10, :12] = False
    for strategy in ("select", "classical-prior", "prior"):
        restorer = FrameRestorer(base.model_copy(update={"kernel_strategy": strategy}), priors=priors)
        (o,) = restorer([FrameInput(key="f", image=img, mask=mask, seed_key="golden/f")])
        out[f"restorer/{strategy}/restored"] = torch.from_numpy(o.restored.copy())
        out[f"restorer/{strategy}/kernel"] = torch.from_numpy(o.kernel.copy())
        out[f"restorer/{strategy}/residual"] = torch.tensor(o.residual)


def compute() -> dict[str, Tensor]:
    torch.set_num_threads(1)
    out: dict[str, Tensor] = {}
    for part in (_kernel_cases, _blind_cases, _task_cases, _classical_cases, _restorer_cases):
        part(out)
    return {k: v.detach().cpu().clone() for k, v in out.items()}


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save(compute(), GOLDEN)
    print(f"wrote {GOLDEN}")
