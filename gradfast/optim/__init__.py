"""Fused optimizers: drop-in replacements for torch.optim.Adam and torch.optim.AdamW."""
from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
