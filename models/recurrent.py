"""LSTM / GRU: the last hidden state of a stacked recurrent net feeds the head.

Layers are stacked one recurrent module each, with torch's own dropout between them,
rather than one multi-layer module: on a GPU, cuDNN draws a multi-layer module's
inter-layer dropout from a state of its own that no checkpoint can hold, so a run
resumed on a GPU drew other masks than the uninterrupted run (measured on an H100: test
MSE 1.2e-4 apart; docs/benchmarks.md, GPU check). nn.Dropout draws from torch's RNG,
which checkpoints hold. Checkpoints of the older layout (`rnn.weight_ih_l1`, ...) load.
"""

import re

from torch import nn

from models.heads import VectorHead
from models.registry import register

_OLD_KEY = re.compile(r"^rnn\.(\w+?)_l(\d+)$")


class RecurrentNet(nn.Module):
    cell = None                                 # nn.LSTM or nn.GRU, by subclass

    def __init__(self, cfg, shapes):
        super().__init__()
        cell = self.cell
        sizes = [shapes.n_features] + [cfg.hidden_size] * cfg.num_layers
        self.layers = nn.ModuleList(cell(a, b, batch_first=True) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.head = VectorHead(cfg.hidden_size, shapes)
        self._register_load_state_dict_pre_hook(_from_multi_layer_keys)

    def embed(self, x):                                 # (B, L, F)
        """The last layer's hidden state after the window's last step: what the head reads (B, D).
        `similar index --run` searches these (analysis/similar/source.py)."""
        out = x
        for i, layer in enumerate(self.layers):
            if i:
                out = self.dropout(out)         # between layers, as nn.GRU(dropout=p) does
            out, _ = layer(out)                 # (B, L, D)
        return out[:, -1]

    def forward(self, x, session=None, future=None):   # (B, L, F), session codes (B,), (B, H, C)
        return self.head(self.embed(x), session, future)   # (B, H, K) or (B, C)


@register("lstm")
class LSTMNet(RecurrentNet):
    cell = nn.LSTM


@register("gru")
class GRUNet(RecurrentNet):
    cell = nn.GRU


def _from_multi_layer_keys(state_dict, prefix, *args):
    """rnn.weight_ih_l1 (one multi-layer module) -> layers.1.weight_ih_l0, in place."""
    for key in [k for k in state_dict if k.startswith(prefix + "rnn.")]:
        match = _OLD_KEY.match(key[len(prefix):])
        if match:
            name, layer = match.groups()
            state_dict[f"{prefix}layers.{layer}.{name}_l0"] = state_dict.pop(key)


