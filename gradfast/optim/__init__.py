"""Fused optimizers: drop-in replacements for torch.optim.Adam, torch.optim.AdamW and
torch.optim.SGD."""
from .adam import Adam, AdamW
from .sgd import SGD

__all__ = ["Adam", "AdamW", "SGD"]
