"""Temporal convolutional network (Bai et al., 2018): causal dilated 1-D convolutions
with residual connections; the last time step feeds the head."""

import torch.nn.functional as F
from torch import nn

from models.heads import VectorHead
from models.registry import register


class CausalBlock(nn.Module):
    def __init__(self, channels_in, channels, kernel_size, dilation, dropout):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation     # left padding only: no look into the future
        self.conv1 = nn.Conv1d(channels_in, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(channels_in, channels, 1) if channels_in != channels else nn.Identity()

    def forward(self, x):                           # (B, C_in, L)
        h = self.dropout(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.dropout(F.relu(self.conv2(F.pad(h, (self.pad, 0)))))
        return F.relu(h + self.skip(x))             # (B, C, L)


@register("tcn")
class TCN(nn.Module):
    def __init__(self, cfg, shapes):
        super().__init__()
        layers, channels_in = [], shapes.n_features
        for i in range(cfg.num_layers):
            layers.append(CausalBlock(channels_in, cfg.hidden_size, cfg.kernel_size, 2 ** i, cfg.dropout))
            channels_in = cfg.hidden_size
        self.net = nn.Sequential(*layers)
        self.head = VectorHead(cfg.hidden_size, shapes)

    def embed(self, x):                             # (B, L, F)
        """The last time step's channels, what the head reads: (B, D)."""
        return self.net(x.transpose(1, 2))[:, :, -1]    # (B, D, L) -> (B, D)

    def forward(self, x, session=None, future=None):   # (B, L, F), session codes (B,), (B, H, C)
        return self.head(self.embed(x), session, future)   # (B, H, K) or (B, C)
