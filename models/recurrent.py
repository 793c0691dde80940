"""LSTM / GRU: the last hidden state of a stacked recurrent net feeds the head."""

from torch import nn

from models.heads import VectorHead


class RecurrentNet(nn.Module):
    def __init__(self, cfg, shapes):
        super().__init__()
        cell = nn.LSTM if cfg.name == "lstm" else nn.GRU
        self.rnn = cell(shapes.n_features, cfg.hidden_size, num_layers=cfg.num_layers, batch_first=True,
                        dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.head = VectorHead(cfg.hidden_size, cfg, shapes)

    def forward(self, x):                       # (B, L, F)
        out, _ = self.rnn(x)                    # (B, L, D)
        return self.head(out[:, -1])            # (B, H, K) or (B, C)
