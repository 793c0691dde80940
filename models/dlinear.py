"""DLinear (Zeng et al., 2023, "Are Transformers Effective for Time Series Forecasting?").

The input is split into a trend (moving average) and a remainder; one linear map
over time per part (shared across channels, or one per channel) forecasts each.
"""

import torch
from torch import nn

from models.heads import ChannelMap, SessionEmbedding, VectorHead
from models.registry import register


class MovingAverage(nn.Module):
    """Moving average over time with edge padding, so the output keeps length L."""

    def __init__(self, kernel_size):
        super().__init__()
        self.kernel_size = kernel_size
        self.pool = nn.AvgPool1d(kernel_size, stride=1)

    def forward(self, x):                                       # (B, L, F)
        front = x[:, :1].expand(-1, (self.kernel_size - 1) // 2, -1)
        back = x[:, -1:].expand(-1, self.kernel_size // 2, -1)
        padded = torch.cat([front, x, back], dim=1)             # (B, L + k - 1, F)
        return self.pool(padded.transpose(1, 2)).transpose(1, 2)   # (B, L, F)


@register("dlinear")
class DLinear(nn.Module):
    def __init__(self, cfg, shapes):
        super().__init__()
        self.task = shapes.task
        self.individual = cfg.individual
        self.decompose = MovingAverage(cfg.kernel_size)
        L, H, F = shapes.lookback, shapes.horizon, shapes.n_features
        self.horizon, self.n_quantiles = H, shapes.n_quantiles
        # Quantiles: each channel's own linear maps give Q values a step (channels stay independent).
        out = H * shapes.n_quantiles if self.task == "forecast" else cfg.hidden_size
        if cfg.individual:
            self.seasonal = nn.ModuleList(nn.Linear(L, out) for _ in range(F))
            self.trend = nn.ModuleList(nn.Linear(L, out) for _ in range(F))
        else:
            self.seasonal = nn.Linear(L, out)
            self.trend = nn.Linear(L, out)
        if self.task == "forecast":
            self.head = ChannelMap(shapes)
            # A session's own offset of every forecast, learned from its embedding.
            self.session_offset = None
            # Known-future values over the horizon, one linear map to every step's outputs.
            self.future_map = nn.Linear(H * shapes.n_future, H * shapes.n_outputs) if shapes.n_future else None
            if shapes.session_embedding:
                self.sessions = SessionEmbedding(shapes)
                self.session_offset = nn.Linear(shapes.session_embedding, H * shapes.n_outputs)
        else:
            self.head = VectorHead(out * F, shapes)

    def _time_linear(self, layers, x):                          # x (B, F, L)
        if self.individual:
            return torch.stack([layer(x[:, i]) for i, layer in enumerate(layers)], dim=1)
        return layers(x)                                        # (B, F, out)

    def forward(self, x, session=None, future=None):            # (B, L, F), session codes (B,), (B, H, C)
        trend = self.decompose(x)
        seasonal = x - trend
        y = self._time_linear(self.seasonal, seasonal.transpose(1, 2)) + \
            self._time_linear(self.trend, trend.transpose(1, 2))   # (B, F, out)
        if self.task == "forecast":
            if self.n_quantiles > 1:
                y = y.view(y.shape[0], y.shape[1], self.horizon, self.n_quantiles)   # (B, F, H, Q)
            out = self.head(y.transpose(1, 2))                  # (B, H, K [x Q])
            if self.session_offset is not None:
                out = out + self.session_offset(self.sessions(session, len(x))).view(out.shape)
            if self.future_map is not None and future is not None:
                out = out + self.future_map(future.flatten(1).to(out.dtype)).view(out.shape)
            return out
        return self.head(y.flatten(1), session, future)         # (B, C)
