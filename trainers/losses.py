"""The training loss: one function per `training.loss`, used by the training step and by
evaluation (so the validation loss early stopping watches is the loss trained on)."""

import functools

import torch

from errors import InputError
from trainers.quantiles import pinball_loss


def regression_loss(name, huber_delta=1.0, quantiles=()):
    """f(out, y, reduction="mean") for `training.loss`; out (B, H, K), or (B, H, K * Q) for quantiles,
    and y (B, H, K) in normalized units."""
    if name == "mse":
        return torch.nn.functional.mse_loss
    if name == "mae":
        return torch.nn.functional.l1_loss
    if name == "huber":
        return functools.partial(torch.nn.functional.huber_loss, delta=huber_delta)
    if name == "quantile":
        return functools.partial(pinball_loss, quantiles=list(quantiles))
    raise InputError(f"training.loss is {name!r}; choose mse, mae, huber or quantile")


def training_loss(config):
    """The loss function of a run; refuses a regression loss set for classification."""
    tc = config.training
    if config.model.task == "classify":
        if tc.loss != "mse":
            raise InputError(f"training.loss is {tc.loss!r}, but model.task is classify, which trains on "
                             "cross-entropy; remove training.loss")
        return None
    return regression_loss(tc.loss, tc.huber_delta, config.model.quantiles)
