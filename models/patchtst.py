"""A small PatchTST-style transformer (Nie et al., 2023, "A Time Series is Worth 64 Words").

Channel independence: each feature's series is cut into overlapping patches,
embedded, passed through a transformer encoder shared by all channels, and
flattened into a linear forecast of that channel; RevIN handles level shifts.
"""

import torch
from torch import nn

from models.heads import ChannelMap, RevIN, VectorHead


class PatchTST(nn.Module):
    def __init__(self, cfg, shapes):
        super().__init__()
        self.task = cfg.task
        self.patch_len, self.patch_stride = cfg.patch_len, cfg.patch_stride
        L, F = shapes.lookback, shapes.n_features
        # Pad the end by one stride (as the paper does) so the last rows form a patch.
        self.n_patches = (L - self.patch_len) // self.patch_stride + 2
        self.revin = RevIN(F) if cfg.revin else None
        self.embed = nn.Linear(self.patch_len, cfg.d_model)
        self.position = nn.Parameter(torch.randn(1, self.n_patches, cfg.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, dim_feedforward=2 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(cfg.dropout)
        flat = self.n_patches * cfg.d_model
        if cfg.task == "forecast":
            self.flatten_head = nn.Linear(flat, shapes.horizon)
            self.channels = ChannelMap(shapes)
        else:
            self.head = VectorHead(F * cfg.d_model, cfg, shapes)

    def forward(self, x):                                            # (B, L, F)
        B, L, F = x.shape
        if self.revin is not None:
            x = self.revin.normalize(x)
        series = x.transpose(1, 2)                                   # (B, F, L)
        series = torch.cat([series, series[:, :, -1:].expand(-1, -1, self.patch_stride)], dim=2)
        patches = series.unfold(2, self.patch_len, self.patch_stride)   # (B, F, N, P)
        z = self.embed(patches.reshape(B * F, self.n_patches, self.patch_len)) + self.position
        z = self.encoder(self.dropout(z))                            # (B*F, N, D)
        if self.task == "classify":
            return self.head(z.mean(1).reshape(B, -1))               # (B, C)
        y = self.flatten_head(z.reshape(B, F, -1)).transpose(1, 2)   # (B, H, F)
        if self.revin is not None:
            y = self.revin.denormalize(y)
        return self.channels(y)                                      # (B, H, K)
