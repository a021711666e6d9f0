"""Integration tests: each one starts from a fresh accelerate state (Hugging Face's Trainer
and accelerate's Accelerator keep a process-wide singleton that refuses a second
configuration, e.g. another mixed_precision)."""
import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState
    except ImportError:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
