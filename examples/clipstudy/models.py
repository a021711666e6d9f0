"""The two recurrent models of examples/rnn_exploding.py, initialised where gradients explode.

RNN   ReLU units, recurrent weights = gain x identity (Le et al. 2015's IRNN), biases zero.
LSTM  recurrent weight blocks orthogonal x gain, forget-gate bias + forget_bias.
Both read the whole sequence and apply a linear read-out at every step. The inputs and
outputs are sized by the task (the example's model is the adding problem's 2 -> 1).
"""
from __future__ import annotations

import torch
from torch import nn

# The example's settings (examples/rnn_exploding.py): gain, forget-gate bias, Adam lr.
MODEL_DEFAULTS = {
    "rnn": {"gain": 1.0, "forget_bias": 0.0, "lr": 1e-3},
    "lstm": {"gain": 3.0, "forget_bias": 3.0, "lr": 1e-2},
}


class Recurrent(nn.Module):
    def __init__(self, cell: str, in_dim: int, out_dim: int, hidden: int, gain: float,
                 forget_bias: float) -> None:
        super().__init__()
        with torch.no_grad():
            if cell == "rnn":
                self.rnn = nn.RNN(in_dim, hidden, nonlinearity="relu", batch_first=True)
                self.rnn.weight_hh_l0.copy_(torch.eye(hidden) * gain)
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.zero_()
            elif cell == "lstm":
                self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)
                for block in self.rnn.weight_hh_l0.split(hidden, dim=0):
                    nn.init.orthogonal_(block, gain=gain)
                # gates are stacked (input, forget, cell, output)
                self.rnn.bias_hh_l0[hidden:2 * hidden] += forget_bias
            else:
                raise ValueError(f"unknown cell {cell!r}")
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out)  # (batch, T, out_dim)


def make_model(cell: str, task, hidden: int) -> Recurrent:
    d = MODEL_DEFAULTS[cell]
    return Recurrent(cell, task.in_dim, task.out_dim, hidden, d["gain"], d["forget_bias"])
