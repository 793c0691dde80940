"""Model registry: `build_model(model_cfg, shapes)` for every architecture by name.

Every model maps x (B, L, F) to
  forecast:  (B, H, K)  H future steps of K targets
  classify:  (B, C)     logits of C classes
"""

import dataclasses

from errors import InputError
from models.baselines import RepeatLast
from models.dlinear import DLinear
from models.patchtst import PatchTST
from models.recurrent import RecurrentNet
from models.tcn import TCN

MODELS = {"dlinear": DLinear, "lstm": RecurrentNet, "gru": RecurrentNet, "tcn": TCN, "patchtst": PatchTST,
          "repeat_last": RepeatLast}
TASKS = ("forecast", "classify")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the data gives the model."""

    lookback: int            # L
    horizon: int             # H
    n_features: int          # F
    n_targets: int           # K (forecast) or number of classes (classify)
    target_channels: tuple = None   # indices of the targets among the features, when they are features


def build_model(model_cfg, shapes):
    if model_cfg.name not in MODELS:
        raise InputError(f"model.name is {model_cfg.name!r}; choose one of {', '.join(MODELS)}")
    if model_cfg.task not in TASKS:
        raise InputError(f"model.task is {model_cfg.task!r}; choose one of {', '.join(TASKS)}")
    return MODELS[model_cfg.name](model_cfg, shapes)
