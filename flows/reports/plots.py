"""Plots written next to training runs and into the model card (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def plot_losses(losses: list[tuple[int, float]], path: Path, title: str) -> None:
    """Loss curve PNG (log y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if losses:
        steps, vals = zip(*losses, strict=True)
        ax.plot(steps, vals, lw=0.8, alpha=0.5, label="mean over log window")
        if len(vals) >= 10:
            k = max(5, len(vals) // 30)
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, lw=1.5, label=f"moving mean ({k} windows)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("HSM loss (λ(t)-weighted ε_v MSE)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
