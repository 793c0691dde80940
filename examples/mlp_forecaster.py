"""An example of your own model, trained without editing h5series (docs/models.md):

    python main.py train model.name=examples.mlp_forecaster:MLPForecaster model.custom.hidden_size=128

A model class takes (params, shapes): `params` is its `Config` dataclass filled from `model.custom`
(unknown keys are refused with the valid ones), `shapes` says what the data gives it (lookback,
horizon, n_features, n_targets, task). It maps x (B, L, F) to (B, H, K) forecasts, or (B, C) class
logits when shapes.task is classify. tests/test_user_models.py trains it end to end.
"""

import dataclasses

from torch import nn


@dataclasses.dataclass
class MLPConfig:
    hidden_size: int = 64
    """Units of the hidden layer."""
    dropout: float = 0.0
    """Dropout after the hidden layer."""


class MLPForecaster(nn.Module):
    """The whole window, flattened, through one hidden layer: a baseline with every lag as an input."""

    Config = MLPConfig

    def __init__(self, params, shapes):
        super().__init__()
        self.shapes = shapes
        out = shapes.n_targets if shapes.task == "classify" else shapes.horizon * shapes.n_targets
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(shapes.lookback * shapes.n_features, params.hidden_size),
                                 nn.ReLU(), nn.Dropout(params.dropout), nn.Linear(params.hidden_size, out))

    def forward(self, x):                                        # (B, L, F)
        out = self.net(x)
        if self.shapes.task == "classify":
            return out                                           # (B, C)
        return out.view(-1, self.shapes.horizon, self.shapes.n_targets)   # (B, H, K)
