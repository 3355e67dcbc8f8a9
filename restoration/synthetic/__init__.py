"""Procedural packaged-goods renderer: the only training data of the shipped image prior.

Seeds fully determine a render (numpy ``default_rng(seed)``, no global state); fonts are file
paths supplied by the caller (an empty list uses Pillow's built-in font).

Split convention (clean train/test provenance): training uses seeds in
``[0, TRAIN_SEEDS_END)`` = [0, 1_000_000); held-out evaluation and benchmarks use seeds
``>= HELDOUT_SEED_START`` = 10_000_000, which the trainer never draws.
"""

from restoration.synthetic.render import (
    HELDOUT_SEED_START,
    RENDERER_VERSION,
    SUPERSAMPLE,
    TRAIN_SEEDS_END,
    RenderError,
    is_heldout,
    render_batch,
    render_canvas,
    render_product,
    to_tensor,
)

__all__ = [
    "HELDOUT_SEED_START",
    "RENDERER_VERSION",
    "SUPERSAMPLE",
    "TRAIN_SEEDS_END",
    "RenderError",
    "is_heldout",
    "render_batch",
    "render_canvas",
    "render_product",
    "to_tensor",
]
