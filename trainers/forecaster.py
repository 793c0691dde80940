"""Inference without a Trainer: a saved run loaded for scoring (`load_run` -> LoadedRun) and the one
forward pass every scoring path uses (`Forecaster`): the validation and `evaluate` (trainers/evaluator.py),
`predict` (trainers/predict.py) and `similar index --run`'s embeddings (analysis/similar/source.py).
Nothing here builds an optimizer, a training loader or a memory probe."""

import dataclasses

import numpy as np
import torch

from config import Config
from trainers.distributed import Group
from trainers.quantiles import denormalize_quantiles, point_forecast
from trainers.rundir import data_changes, restore
from trainers.setup import amp_setup, resolve_device


def model_shapes(prepared, model_cfg, vocabulary=()):
    """What the model is built for (quantile forecasts: Q values per target and step; `vocabulary`:
    the names of the sessions the run trains on, for a session embedding)."""
    from models import Shapes
    cols = prepared.columns
    same = cols.target_source == "features"
    target_channels = tuple(list(cols.feature_index).index(c) for c in cols.target_index) \
        if same and set(cols.target_index) <= set(cols.feature_index) else None
    n_targets = model_cfg.n_classes if model_cfg.task == "classify" else len(cols.target_index)
    return Shapes(prepared.window.lookback, prepared.window.horizon, len(cols.feature_index), n_targets,
                  target_channels, task=model_cfg.task, n_quantiles=max(1, len(model_cfg.quantiles)),
                  n_sessions=len(vocabulary), session_embedding=model_cfg.session_embedding,
                  n_future=len(cols.future_names))


def session_codes(vocabulary, catalog, device="cpu"):
    """(S,) the embedding code of each catalog session, matched by name: 1 + its place in the run's
    vocabulary, 0 for a session the run did not train on."""
    place = {name: i + 1 for i, name in enumerate(vocabulary)}
    return torch.as_tensor([place.get(s.name, 0) for s in catalog.sessions], dtype=torch.long, device=device)


class Forecaster:
    """A model applied to normalized windows as the run trained it: on its device, under the run's
    autocast, with each session's embedding code and the known-future inputs; forecasts in original units.
    `session_codes`: (S,) codes of the catalog's sessions (a session embedding), else None."""

    def __init__(self, model, config, normalizer, device, autocast, session_codes=None):
        self.model, self.normalizer, self.device, self.autocast = model, normalizer, device, autocast
        self.session_codes = session_codes
        self.classify = config.model.task == "classify"
        self.quantiles = list(config.model.quantiles)     # [] for point forecasts

    @classmethod
    def of_run(cls, run, prepared):
        """The forecaster of a LoadedRun over `prepared` (its own data, or other files read with its statistics):
        sessions matched to the run's embedding rows by name; a new one gets the 'unknown' row."""
        device = next(run.model.parameters()).device
        codes = run.session_codes(prepared.catalog) if run.config.model.session_embedding else None
        return cls(run.model, run.config, prepared.normalizer, device, amp_setup(run.config.training.amp, device)[0],
                   codes)

    def inputs(self, session, future=None):
        """What the model takes besides x: the sessions' embedding codes and the known-future values."""
        inputs = {}
        if self.session_codes is not None:
            inputs["session"] = self.session_codes[torch.as_tensor(session).to(self.device, non_blocking=True)]
        if future is not None:
            inputs["future"] = future.to(self.device, non_blocking=True)
        return inputs

    def forward(self, x, session, future=None, model=None):
        """The raw output in float32, normalized units: (B, H, K x Q) forecasts or (B, C) logits."""
        return self.apply(x, self.inputs(session, future), model)

    def apply(self, x, inputs, model=None):
        """forward with the inputs besides x already made (`inputs`); `model`: another with the same
        inputs (the trainer's, while it trains)."""
        with self.autocast:
            out = (model or self.model)(x.to(self.device), **inputs)
        return out.float()

    def point(self, out):
        """(B, H, K) the point forecast of a raw output (the quantile nearest 0.5 with quantiles)."""
        return point_forecast(out, self.quantiles)

    @torch.no_grad()
    def score(self, ids, x, y, future=None):
        """{"session", "prediction", "truth"[, "class_probability", "quantiles"]} of one batch as numpy arrays
        in original units; x (B, L, F) normalized, y (B, H, K) normalized (or None: filled in by the caller)."""
        ids_t = torch.as_tensor(ids, device=self.device)
        out = self.forward(x, ids_t, future)
        columns = {"session": np.asarray(ids, np.int32)}
        if self.classify:
            probability = torch.softmax(out, dim=-1)                         # (B, C)
            columns["class_probability"] = probability.cpu().numpy()
            columns["prediction"] = probability.argmax(-1).float().reshape(-1, 1, 1).cpu().numpy()
            truth = None if y is None else y.reshape(-1, 1, 1).float()
        else:
            norm = self.normalizer
            columns["prediction"] = norm.denormalize_targets(self.point(out), ids_t).cpu().numpy()   # (B, H, K)
            if self.quantiles:
                columns["quantiles"] = denormalize_quantiles(out, self.quantiles, norm, ids_t).cpu().numpy()
            truth = None if y is None else norm.denormalize_targets(y.to(self.device).float(), ids_t)
        if truth is not None:
            columns["truth"] = truth.cpu().numpy().astype(np.float32)
        return columns

    @torch.no_grad()
    def embed(self, x):
        """(B, D) float32 numpy: the model's embed(x), its last hidden representation (similar --run)."""
        return self.model.embed(x.to(self.device)).float().cpu().numpy()


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to forecast: its config, its data read with its own statistics, and its
    model (the checkpoint's weights, eval mode, on the config's device)."""

    config: Config
    prepared: object          # data.dataset.PreparedData
    model: torch.nn.Module
    checkpoint: str           # best or last
    epoch: int                # epochs completed when the checkpoint was saved
    vocabulary: list          # names of the sessions the run trained on (its session embedding's rows)
    data_changed: list = dataclasses.field(default_factory=list)   # how its data differs from the checkpoint's

    def session_codes(self, catalog):
        """(S,) embedding codes of a catalog's sessions for this run's model (0: a session it never saw)."""
        return session_codes(self.vocabulary, catalog, next(self.model.parameters()).device)

    def forecaster(self, prepared=None):
        return Forecaster.of_run(self, prepared or self.prepared)


def load_run(run_dir, checkpoint=None, config=None):
    """The run in `run_dir` with its `checkpoint` (best by default, else last) loaded, its config.yaml and
    data checked against the checkpoint (trainers/rundir.py); `config`: the run's own read from config.yaml,
    unless given (the same run on another device)."""
    from models import build_model
    config, state, prepared, which = restore(run_dir, config, which=checkpoint)
    vocabulary = list(state.get("session_vocabulary") or [s.name for s in prepared.catalog.sessions])
    model = build_model(config.model, model_shapes(prepared, config.model, vocabulary))
    model.load_state_dict(state["model"])
    model.to(resolve_device(config.training.device, Group())).eval()
    return LoadedRun(config, prepared, model, which, int(state["epoch"]), vocabulary, data_changes(state, prepared))
