"""Shipped prior checkpoints (package data): <name>.safetensors (EMA weights) + <name>.json.

Read only through restoration.priors.load_shipped (importlib.resources); see docs/models.md.
"""
