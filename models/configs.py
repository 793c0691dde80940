"""Each built-in model's own hyperparameters: one dataclass per model, its section of the config
(`model.gru.hidden_size`, `model.patchtst.d_model`). `@section(name)` is the one list of sections:
config.py derives ModelConfig's fields from SECTIONS, and @register (models/registry.py) gives the model of
that name this class. Kept free of torch (.importlinter holds it so) so that reading a config, which every
command does, never imports torch (~2.7 s and ~180 MB here): this module belongs to the config layer.
"""

import dataclasses

from errors import InputError

SECTIONS = {}     # model.name -> its hyperparameters' dataclass, in the order config.yaml lists them


def section(*names):
    """Class decorator: the config section model.<name> of each of `names` is this dataclass."""
    def add(cls):
        for name in names:
            if name in SECTIONS:
                raise ValueError(f"config section model.{name} is declared twice ({SECTIONS[name].__name__}, "
                                 f"{cls.__name__})")
            SECTIONS[name] = cls
        return cls
    return add


def _at_least_one(section, obj, names):
    for name in names:
        if getattr(obj, name) < 1:
            raise InputError(f"model.{section}.{name} must be at least 1, got {getattr(obj, name)}")


def _dropout(section, value):
    if not 0.0 <= value < 1.0:
        raise InputError(f"model.{section}.dropout must be within [0, 1), got {value}")


@section("dlinear")
@dataclasses.dataclass
class DLinearConfig:
    """DLinear: a linear map over time of the trend and of the remainder."""

    kernel_size: int = 25
    """Moving-average window of the trend."""
    individual: bool = False
    """One linear map per channel instead of one shared."""
    hidden_size: int = 64
    """classify: width of each channel's summary before the class head."""

    def __post_init__(self):
        _at_least_one("dlinear", self, ("kernel_size", "hidden_size"))


@section("lstm", "gru")
@dataclasses.dataclass
class RecurrentConfig:
    """LSTM / GRU: stacked recurrent layers; the last hidden state feeds the head."""

    hidden_size: int = 64
    """Units per layer."""
    num_layers: int = 2
    """Stacked layers."""
    dropout: float = 0.1
    """Dropout between layers (none with one layer)."""

    def __post_init__(self):
        _at_least_one("gru/lstm", self, ("hidden_size", "num_layers"))
        _dropout("gru/lstm", self.dropout)


@section("tcn")
@dataclasses.dataclass
class TCNConfig:
    """TCN: causal dilated convolutions with residual connections."""

    hidden_size: int = 64
    """Channels per block."""
    num_layers: int = 2
    """Blocks; the receptive field grows as 2^num_layers."""
    kernel_size: int = 3
    """Convolution width."""
    dropout: float = 0.1
    """Dropout inside each block."""

    def __post_init__(self):
        _at_least_one("tcn", self, ("hidden_size", "num_layers", "kernel_size"))
        _dropout("tcn", self.dropout)


@section("patchtst")
@dataclasses.dataclass
class PatchTSTConfig:
    """PatchTST: a transformer over patches of each channel."""

    patch_len: int = 16
    """Rows per patch."""
    patch_stride: int = 8
    """Rows between patch starts."""
    d_model: int = 64
    """Embedding width."""
    n_heads: int = 4
    """Attention heads (must divide d_model)."""
    num_layers: int = 2
    """Encoder layers."""
    d_ff: int = 128
    """Width of each encoder layer's feed-forward block."""
    dropout: float = 0.1
    """Dropout probability."""
    revin: bool = True
    """Reversible instance normalization of each window."""
    norm: str = "batch"
    """batch (the paper's BatchNorm over the embedding) or layer (LayerNorm)."""

    def __post_init__(self):
        _at_least_one("patchtst", self, ("patch_len", "patch_stride", "d_model", "n_heads", "num_layers", "d_ff"))
        _dropout("patchtst", self.dropout)
        if self.norm not in ("batch", "layer"):
            raise InputError(f"model.patchtst.norm is {self.norm!r}; choose one of batch, layer")
        if self.d_model % self.n_heads:
            raise InputError(f"model.patchtst.n_heads ({self.n_heads}) must divide model.patchtst.d_model "
                             f"({self.d_model})")

