"""Output heads shared by the models."""

import torch
from torch import nn


class ChannelMap(nn.Module):
    """(B, H, F) per-channel forecasts -> (B, H, K) targets: pick the target channels when
    they are features (no parameters), else learn a projection F -> K. Quantile forecasts
    (B, H, F, Q) -> (B, H, K x Q), each level mapped the same way."""

    def __init__(self, shapes):
        super().__init__()
        self.proj = None
        if shapes.target_channels is not None:
            self.register_buffer("index", torch.as_tensor(shapes.target_channels, dtype=torch.long),
                                 persistent=False)
        else:
            self.proj = nn.Linear(shapes.n_features, shapes.n_targets)

    def forward(self, y):                       # (B, H, F) or (B, H, F, Q)
        levels = y.dim() == 4
        if levels:
            y = y.movedim(-1, 2)                # (B, H, Q, F)
        picked = self.proj(y) if self.proj is not None else y.index_select(-1, self.index)   # (B, H, [Q,] K)
        if levels:
            return picked.transpose(2, 3).flatten(2)     # (B, H, K x Q), target-major
        return picked


class SessionEmbedding(nn.Module):
    """A learned vector per session (the ticker's identity, model.session_embedding): row c for the
    session of code c (1 .. n, the run's sessions by name), row 0 for a session the run did not
    train on, and for batches given without codes."""

    def __init__(self, shapes):
        super().__init__()
        self.table = nn.Embedding(shapes.n_sessions + 1, shapes.session_embedding)

    def forward(self, session, batch):          # (B,) codes or None
        if session is None:
            session = torch.zeros(batch, dtype=torch.long, device=self.table.weight.device)
        return self.table(session)              # (B, E)


class VectorHead(nn.Module):
    """A summary vector (B, D) -> forecast (B, H, K) or class logits (B, C); with a session
    embedding, the session's vector is appended to the summary."""

    def __init__(self, dim, shapes):
        super().__init__()
        self.task = shapes.task
        self.horizon = shapes.horizon
        self.n_out = shapes.n_outputs
        out = shapes.n_targets if self.task == "classify" else shapes.horizon * shapes.n_outputs
        self.sessions = SessionEmbedding(shapes) if shapes.session_embedding else None
        self.future = shapes.horizon * shapes.n_future          # known-future values, flattened
        self.linear = nn.Linear(dim + shapes.session_embedding + self.future, out)

    def forward(self, h, session=None, future=None):   # (B, D), (B,), (B, H, C)
        if self.sessions is not None:
            h = torch.cat([h, self.sessions(session, len(h))], dim=-1)   # (B, D + E)
        if self.future:
            future = future.flatten(1) if future is not None else h.new_zeros(len(h), self.future)
            h = torch.cat([h, future.to(h.dtype)], dim=-1)               # (B, D + E + H x C)
        out = self.linear(h)
        if self.task == "classify":
            return out                          # (B, C)
        return out.view(-1, self.horizon, self.n_out)   # (B, H, K) or (B, H, K x Q)


class RevIN(nn.Module):
    """Reversible instance normalization (Kim et al., 2022): each window is standardized
    by its own mean/std over time, and forecasts are mapped back. Helps on drifting
    series (used by PatchTST and DLinear variants)."""

    def __init__(self, n_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_features))
        self.bias = nn.Parameter(torch.zeros(n_features))

    def normalize(self, x):                     # (B, L, F)
        self._mean = x.mean(dim=1, keepdim=True).detach()
        self._std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        return (x - self._mean) / self._std * self.weight + self.bias

    def denormalize(self, y):                   # (B, H, F) or (B, H, F, Q)
        if y.dim() == 4:                        # the window's statistics for every level
            scale = (self.weight + self.eps * self.eps)[:, None]
            return (y - self.bias[:, None]) / scale * self._std[..., None] + self._mean[..., None]
        return (y - self.bias) / (self.weight + self.eps * self.eps) * self._std + self._mean
