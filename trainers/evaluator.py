"""Scoring a model on a split: loss and streaming metrics in original units, over every window (or a
fixed seeded subset), across ranks, through the run's Forecaster (trainers/forecaster.py). The Trainer
validates with it; `evaluate` of a saved run uses it alone: no optimizer, no training loader, no memory probe."""

import dataclasses
import logging

import numpy as np
import torch

import progress
from data.dataloader import build_loader
from errors import InputError
from trainers.distributed import Group
from trainers.losses import training_loss
from trainers.metrics import ClassificationMetrics, RegressionMetrics
from trainers.quantiles import QuantileMetrics, denormalize_quantiles

log = logging.getLogger("h5series")


class Evaluator:
    """A model on `prepared`'s splits through its `forecaster` (trainers/forecaster.py: the model, device,
    autocast and session codes); `loader_cfg` the loader settings (a config's training section)."""

    def __init__(self, config, prepared, forecaster, loader_cfg, *, group=None):
        self.config, self.prepared, self.forecaster, self.loader_cfg = config, prepared, forecaster, loader_cfg
        self.model, self.device = forecaster.model, forecaster.device
        self.group = group or Group()
        self.task = config.model.task
        self.loss_fn = training_loss(config)              # None for classify (cross-entropy)
        self.quantiles = list(config.model.quantiles)     # [] for point forecasts
        self._subsets = {}

    @torch.no_grad()
    def evaluate(self, split, model=None, max_windows=0, sample=None):
        """Loss and metrics over every window of `split` (at most `max_windows` of them: a fixed seeded
        subset, see _subset), in order; metrics in original units. `sample`: a ForecastSample the
        forecasts of its sessions are added to (the validation figure)."""
        model = model or self.model
        model.eval()
        tc = self.config.training
        prepared = self.prepared
        if max_windows and prepared.n_windows(split) > max_windows:
            prepared = dataclasses.replace(prepared, blocks={**prepared.blocks,
                                                             split: self._subset(split, max_windows)})
        loader = build_loader(prepared, split, self.loader_cfg, seed=self.config.seed, rank=self.group.rank,
                              world_size=self.group.world_size, device=self.device, return_ids=True)
        norm = self.prepared.normalizer
        collect = not tc.compute_metrics_online
        if self.task == "classify":
            metrics = {"": ClassificationMetrics(self.config.model.n_classes, self.device, collect)}
        else:
            metrics = {"": RegressionMetrics(self.device, collect, self.prepared.columns.target_names)}
            if self.config.output.metrics_in_normalized_units:
                metrics["norm_"] = RegressionMetrics(self.device, collect)
            if self.quantiles:
                metrics["quantile_"] = QuantileMetrics(self.quantiles, self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        bar = progress.bar(total=prepared.n_windows(split) // self.group.world_size, desc=f"evaluate {split}",
                           unit="window", enabled=self.group.is_main, leave=False)
        for batch in loader:
            bar.update(len(batch.x))
            x, y = batch.x.to(self.device), batch.y.to(self.device)
            out = self.forecaster.apply(x, self.model_inputs(batch), model)
            if self.task == "classify":
                loss_sum += torch.nn.functional.cross_entropy(out, y.reshape(-1).long(), reduction="sum").double()
                metrics[""].update(out, y)
            else:
                loss_sum += self.loss_fn(out, y, reduction="sum").double() / y[0].numel()
                ids = batch.session.to(self.device)
                point = self.forecaster.point(out)                     # (B, H, K)
                y_units = norm.denormalize_targets(y, ids)
                point_units = norm.denormalize_targets(point, ids)
                metrics[""].update(point_units, y_units)
                if "norm_" in metrics:
                    metrics["norm_"].update(point, y)
                quantiles = denormalize_quantiles(out, self.quantiles, norm, ids) if self.quantiles else None
                if "quantile_" in metrics:
                    metrics["quantile_"].update(quantiles, y_units)
                if sample is not None:
                    first_target = batch.row.numpy() + self.prepared.window.first_target
                    sample.add(batch.session.numpy(), first_target, point_units, y_units, quantiles)
            count += len(x)
        bar.close()
        # Every rank evaluated its share; fold the others' sums and moments in (exact, not averaged).
        total, count = global_sum(self.group, loss_sum, count)
        if count == 0:
            raise InputError(f"split {split!r} has no windows to evaluate; check data.split")
        result = {"loss": total / count}
        for prefix, m in metrics.items():
            for i, other in enumerate(self.group.gather_objects(m)):
                if i != self.group.rank:
                    m.merge(other)
            result.update({prefix + k: v for k, v in m.compute().items()})
        return result

    def model_inputs(self, batch):
        """What the model takes besides x: the sessions' embedding codes (with a session embedding) and
        the known-future values (with data.known_future_columns)."""
        return self.forecaster.inputs(batch.session, batch.future)

    def _subset(self, split, max_windows):
        """The block table (session, first row, windows) of a seeded subset of `split`'s blocks holding
        exactly max_windows windows (whole blocks, the last one cut), in plan order; the same every epoch."""
        if split not in self._subsets:
            table = np.asarray(self.prepared.blocks[split])
            order = np.random.default_rng([self.config.seed, 0x7A1]).permutation(len(table))
            counts = np.cumsum(table[order, 2])
            take = int(np.searchsorted(counts, max_windows)) + 1
            chosen = table[order[:take]].copy()
            chosen[-1, 2] -= int(counts[take - 1]) - max_windows           # cut the last block to the count
            chosen = chosen[np.lexsort((chosen[:, 1], chosen[:, 0]))]
            self._subsets[split] = chosen
            log.info("validation on a fixed subset of %d of %d %s windows (training.max_val_windows); the test "
                     "evaluation is whole", max_windows, self.prepared.n_windows(split), split)
        return self._subsets[split]


def global_sum(group, total, count):
    """(total, count) summed over ranks, as floats: one host sync (the `.tolist()`); `total` a 0-d tensor."""
    both = torch.stack([total, torch.full((), float(count), dtype=torch.float64, device=total.device)])
    total, count = group.all_reduce(both).tolist()
    return total, count
