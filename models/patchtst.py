"""A PatchTST model (Nie et al., 2023, "A Time Series is Worth 64 Words").

Channel independence: each feature's series is cut into overlapping patches,
embedded, passed through a transformer encoder shared by all channels, and
flattened into a linear forecast of that channel; RevIN handles level shifts.
The encoder follows the paper's code, not torch's stock layer: post-norm with
BatchNorm over the embedding, GELU feed-forward, and "residual attention" (each
layer's attention scores are added to the next layer's, as in RealFormer).
"""

import torch
from torch import nn

from errors import InputError
from models.heads import ChannelMap, RevIN, VectorHead
from models.registry import register


class EmbeddingNorm(nn.Module):
    """BatchNorm1d (the paper's choice) or LayerNorm over the last axis of (B, N, D)."""

    def __init__(self, d_model, kind):
        super().__init__()
        self.batch = kind == "batch"
        self.norm = nn.BatchNorm1d(d_model) if self.batch else nn.LayerNorm(d_model)

    def forward(self, z):                                            # (B, N, D)
        return self.norm(z.transpose(1, 2)).transpose(1, 2) if self.batch else self.norm(z)


class ResidualAttention(nn.Module):
    """Multi-head self-attention that also returns its pre-softmax scores for the next layer."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads, self.scale = n_heads, (d_model // n_heads) ** -0.5
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, z, previous_scores):                           # (B, N, D)
        B, N, D = z.shape
        q, k, v = self.qkv(z).reshape(B, N, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, h, N, D/h)
        scores = q @ k.transpose(-1, -2) * self.scale                # (B, h, N, N)
        if previous_scores is not None:
            scores = scores + previous_scores
        attended = scores.softmax(-1) @ v                            # (B, h, N, D/h)
        return self.out(attended.transpose(1, 2).reshape(B, N, D)), scores


class EncoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attention = ResidualAttention(cfg.d_model, cfg.n_heads)
        self.feed_forward = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Dropout(cfg.dropout),
                                          nn.Linear(cfg.d_ff, cfg.d_model))
        self.norm_attention = EmbeddingNorm(cfg.d_model, cfg.norm)
        self.norm_feed_forward = EmbeddingNorm(cfg.d_model, cfg.norm)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, z, scores):                                    # (B, N, D)
        attended, scores = self.attention(z, scores)
        z = self.norm_attention(z + self.dropout(attended))
        z = self.norm_feed_forward(z + self.dropout(self.feed_forward(z)))
        return z, scores


@register("patchtst")
class PatchTST(nn.Module):
    def __init__(self, cfg, shapes):
        super().__init__()
        self.task = shapes.task
        if shapes.n_future:
            raise InputError("data.known_future_columns is not supported by patchtst; use gru, lstm, tcn or dlinear")
        if shapes.session_embedding:
            raise InputError("model.session_embedding is not supported by patchtst (its channels are independent "
                             "series); use gru, lstm, tcn or dlinear, or set model.session_embedding=0")
        self.patch_len, self.patch_stride = cfg.patch_len, cfg.patch_stride
        L, F = shapes.lookback, shapes.n_features
        # Pad the end by one stride (as the paper does) so the last rows form a patch.
        self.n_patches = (L - self.patch_len) // self.patch_stride + 2
        self.revin = RevIN(F) if cfg.revin else None
        self.patch_embed = nn.Linear(self.patch_len, cfg.d_model)
        self.position = nn.Parameter(torch.empty(1, self.n_patches, cfg.d_model).uniform_(-0.02, 0.02))
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        flat = self.n_patches * cfg.d_model
        if shapes.task == "forecast":
            self.horizon, self.n_quantiles = shapes.horizon, shapes.n_quantiles
            self.flatten_head = nn.Linear(flat, shapes.horizon * shapes.n_quantiles)   # per channel
            self.channels = ChannelMap(shapes)
        else:
            self.head = VectorHead(F * cfg.d_model, shapes)
        self._register_load_state_dict_pre_hook(_from_old_patch_key)

    def _encode(self, x):                                            # (B, L, F)
        B, L, F = x.shape
        if self.revin is not None:
            x = self.revin.normalize(x)
        series = x.transpose(1, 2)                                   # (B, F, L)
        series = torch.cat([series, series[:, :, -1:].expand(-1, -1, self.patch_stride)], dim=2)
        patches = series.unfold(2, self.patch_len, self.patch_stride)   # (B, F, N, P)
        z = self.dropout(self.patch_embed(patches.reshape(B * F, self.n_patches, self.patch_len)) + self.position)
        scores = None
        for layer in self.layers:
            z, scores = layer(z, scores)                             # (B*F, N, D)
        return z

    def embed(self, x):                                              # (B, L, F)
        """Each channel's encoder output averaged over its patches, channels side by side: (B, F x D)
        (the summary the classifier's head reads)."""
        return self._encode(x).mean(1).reshape(len(x), -1)

    def forward(self, x):                                            # (B, L, F)
        B, L, F = x.shape
        z = self._encode(x)                                          # (B*F, N, D)
        if self.task == "classify":
            return self.head(z.mean(1).reshape(B, -1))               # (B, C)
        y = self.flatten_head(z.reshape(B, F, -1))                   # (B, F, H [x Q])
        if self.n_quantiles > 1:
            y = y.view(B, F, self.horizon, self.n_quantiles)         # (B, F, H, Q)
        y = y.transpose(1, 2)                                        # (B, H, F [, Q])
        if self.revin is not None:
            y = self.revin.denormalize(y)
        return self.channels(y)                                      # (B, H, K [x Q])


def _from_old_patch_key(state_dict, prefix, *args):
    """Checkpoints from before `embed(x)` named the patch projection `embed`: renamed in place."""
    for name in ("weight", "bias"):
        old = f"{prefix}embed.{name}"
        if old in state_dict:
            state_dict[f"{prefix}patch_embed.{name}"] = state_dict.pop(old)
