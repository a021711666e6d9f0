"""gradfast: fused gradient clipping and Adam/AdamW for PyTorch (placeholder, filled in below)."""
