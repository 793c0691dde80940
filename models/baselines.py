"""Baselines that need no training: the yardstick every model must beat."""

import torch
from torch import nn

from errors import InputError
from models.heads import ChannelMap
from models.registry import register


@register("repeat_last")
class RepeatLast(nn.Module):
    """Forecast every future step as the last observed value (the "repeat" baseline of the
    long-horizon literature). Forecast only; its one parameter is unused (optimizers need one)."""

    def __init__(self, cfg, shapes):
        super().__init__()
        if shapes.task != "forecast":
            raise InputError("model.name=repeat_last is a forecasting baseline; use model.task=forecast")
        if shapes.session_embedding or shapes.n_future:
            raise InputError("model.name=repeat_last learns nothing; set model.session_embedding=0 and "
                             "data.known_future_columns=[]")
        if shapes.n_quantiles > 1:
            raise InputError("model.name=repeat_last forecasts one value, not quantiles; remove model.quantiles")
        self.horizon = shapes.horizon
        self.channels = ChannelMap(shapes)
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x):                                        # (B, L, F)
        last = x[:, -1:].expand(-1, self.horizon, -1)            # (B, H, F)
        return self.channels(last) + 0.0 * self.unused           # (B, H, K)
