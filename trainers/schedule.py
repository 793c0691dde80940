"""The learning-rate schedule: a pure function of the optimizer step (`lr_factor`), which the trainer's
LambdaLR multiplies training.learning_rate by; `plateau` is the one schedule that reads the validation loss.

    cosine      warmup (training.warmup_steps, at most a tenth of the run) then cosine to 5% of the rate
    halving     halved every epoch
    hold_decay  held 4 epochs, then x0.9 per epoch
    none        constant
"""

import math

import torch


def lr_factor(step, scheduler, steps_per_epoch, epochs, warmup_steps):
    """The multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if scheduler == "none":
        return 1.0
    if scheduler == "halving":
        return 0.5 ** (step // steps_per_epoch)
    if scheduler == "hold_decay":
        return 0.9 ** max(0, step // steps_per_epoch - 3)
    total = max(1, epochs * steps_per_epoch)
    warmup = min(warmup_steps, total // 10) if warmup_steps else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer, training_cfg, steps_per_epoch):
    """The torch scheduler of training.scheduler: ReduceLROnPlateau, or a LambdaLR over lr_factor."""
    tc = training_cfg
    if tc.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)

    def factor(step):
        return lr_factor(step, tc.scheduler, steps_per_epoch, tc.epochs, tc.warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
