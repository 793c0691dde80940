"""`predict`: a run's forecasts for a split, for new data, or from each session's latest rows.

Three scopes, one file format (data/predictions.py):
  split     every window of the run's own `split` (targets known: truth is filled in)
  --data    every window of other files in the session format, read with the run's columns,
            window and statistics (data.dataset.prepare_new_data)
  --latest  one window per session: its last `lookback` rows, also rows whose target is not
            known yet (convert keeps them), so the forecast is for the step after the data
Windows stream through the block loader (split, --data) or are read per session (--latest);
memory does not grow with the data.
"""

import contextlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

import progress
from atomic import SpaceGuard, atomic_path, check_not_input, check_output, writer_tag
from data import quality
from data.catalog import HDF5_SUFFIXES
from data.layout import LIBVER
from data.dataloader import build_loader
from data.dataset import prepare_new_data
from data.predictions import NAT, PredictionWriter, write_predictions_csv
from errors import InputError
from trainers.plots import panels_from_file, save_png

from trainers.forecaster import load_run
from trainers.rundir import RunDir


@torch.no_grad()
def predict(run_dir, out, split=None, *, data=None, latest=False, fit_new_sessions=None, overwrite=False,
            checkpoint=None, plot=0, strict=False):
    """Predictions of the run's checkpoint (best by default) streamed to `out` in original units (a
    prediction HDF5 file, or with a .csv name a CSV of read_predictions' long table); with `plot` N, also
    a PNG beside it (out with .png) of N sessions' forecasts vs truth. `strict`: --latest refuses a
    session shorter than the lookback instead of skipping it. Returns {"out", "windows", "sessions"[, "plot"]}."""
    picture = _check_arguments(run_dir, out, split, data, latest, fit_new_sessions, overwrite, plot)
    as_csv = Path(out).suffix.lower() == ".csv"
    # A CSV is made from the prediction file, written first beside it as a temporary (removed after).
    h5_out = Path(out).with_name(f".{Path(out).name}.tmp-{writer_tag()}-h5") if as_csv else Path(out)
    split = split or "test"
    run, prepared = _load(run_dir, checkpoint, data, fit_new_sessions, (out, picture))
    config = run.config
    scorer = run.forecaster(prepared)
    sessions = prepared.catalog.sessions
    # Windows are read in order, session after session: a session is not read again once passed, so
    # the open sessions (each with its chunk caches) need not outnumber one round's. With the
    # training LRU (64 by default) memory grew with the file's sessions: 448 MB for 13, 674 for 105.
    pool = prepared.catalog.pool
    pool.max_open = min(pool.max_open, config.training.round_blocks + 1)
    stamped = all(s.has_timestamps for s in sessions)
    if latest:
        chosen = _latest_windows(prepared, strict)
    # The CSV's prediction file is itself a temporary of `out` (.NAME.tmp-PID@HOST-h5): written in place (through
    # atomic_path it got a temporary of its own that no later run recognised after a SIGKILL), removed after.
    h5_out.parent.mkdir(parents=True, exist_ok=True)
    writing = contextlib.nullcontext(h5_out) if as_csv else atomic_path(out, replace=overwrite)
    try:
        with writing as tmp:
            with h5py.File(tmp, "w", libver=LIBVER) as f:          # (long target name lists: see LIBVER)
                writer = PredictionWriter(f, horizon=prepared.window.horizon,
                                          n_targets=len(prepared.columns.target_names), stamped=stamped,
                                          n_classes=config.model.n_classes if scorer.classify else 0,
                                          quantiles=scorer.quantiles)
                batches = _latest_batches(prepared, chosen, config.training.batch_size) if latest else \
                    _split_batches(prepared, split, config.training, scorer.device)
                seen = set()
                guard = SpaceGuard(out, "predictions")
                bar = progress.bar(total=len(chosen) if latest else prepared.n_windows(split), desc="predict",
                                   unit="window")
                for ids, first_rows, x, y, future in batches:
                    guard.check()
                    bar.update(len(ids))
                    seen.update(np.unique(ids).tolist())
                    columns = scorer.score(ids, x, y, future)
                    columns.update(_row_columns(prepared, ids, first_rows, stamped))
                    if latest:
                        columns["truth"] = _known_truth(prepared, ids, first_rows)
                    writer.append(**columns)
                bar.close()
                if writer.n == 0:
                    raise InputError(f"{'the --data files' if data is not None else split + ' split'} has no window "
                                     f"to predict (a window spans {prepared.window.span} rows); check the data")
                writer.finish(session_names=[s.name for s in sessions], target_names=prepared.columns.target_names,
                              window=prepared.window, target_lead=prepared.target_lead, task=config.model.task,
                              scope="latest" if latest else ("data" if data is not None else split),
                              checkpoint=run.checkpoint, epoch_of_checkpoint=run.epoch,
                              data_changed=json.dumps(run.data_changed if data is None else []))
        result = {"out": str(out), "windows": writer.n, "sessions": len(seen)}
        if as_csv:
            with atomic_path(out, replace=overwrite) as tmp:
                write_predictions_csv(h5_out, tmp)
        if picture is not None:
            with atomic_path(picture, replace=overwrite) as tmp:
                save_png(panels_from_file(h5_out, plot), tmp, title=f"{Path(out).name}: forecasts vs truth",
                         format="png")
            result["plot"] = str(picture)
        return result
    finally:
        if as_csv:
            h5_out.unlink(missing_ok=True)          # the prediction file the CSV was made from


def _load(run_dir, checkpoint, data, fit_new_sessions, outputs):
    """(the run, the data to predict): its own, or the --data files read with its columns and statistics."""
    run = load_run(run_dir, checkpoint)
    config, prepared = run.config, run.prepared
    if run.data_changed and data is None:
        print(f"warning: {run_dir}: the data changed since checkpoint {run.checkpoint} was trained "
              f"({'; '.join(run.data_changed)}); predicting the data as it is now (the file says so: data_changed)",
              file=sys.stderr)
    for path in outputs:
        if path is not None:
            check_not_input(path, prepared.catalog.paths)         # the run's own data
    if data is not None:
        prepared = prepare_new_data(config.data, data, prepared.normalizer, fit_new_sessions=fit_new_sessions,
                                    progress=False)
    return run, prepared


def _check_arguments(run_dir, out, split, data, latest, fit_new_sessions, overwrite, plot):
    """The arguments and outputs checked before any work (issue 10, case 14); returns the PNG's path
    (None without --plot)."""
    if latest and split is not None:
        raise InputError("--latest predicts from each session's last rows; it cannot be combined with --split")
    if data is not None and split is not None:
        raise InputError("--data scores every window of the given files; it cannot be combined with --split")
    if fit_new_sessions is not None and data is None:
        raise InputError("--fit-new-sessions fits statistics of sessions in --data files; give --data")
    if plot < 0:
        raise InputError(f"--plot {plot}: give the number of sessions to draw (1 or more)")
    # What the run directory holds that predict reads (its own predictions files are outputs to replace)
    reads = RunDir(run_dir).inputs() + list(data or [])
    check_output(out, overwrite, reads=reads, suffixes=HDF5_SUFFIXES + (".csv",))
    picture = Path(out).with_suffix(".png") if plot else None
    if picture is not None:
        check_output(picture, overwrite, reads=reads)
    return picture


def _split_batches(prepared, split, training_cfg, device):
    """(session ids, first rows, x, y) of every window of `split`, streamed by the block loader."""
    # In order for every split, train too (its training loader shuffles): a session's windows together and
    # in time order is what the file promises and what a backtest reads.
    loader = build_loader(prepared, split, training_cfg, device=device, return_ids=True, shuffle=False)
    for batch in loader:
        yield batch.session.numpy(), batch.row.numpy(), batch.x, batch.y, batch.future


FUTURE_TAIL_ROWS = 4096     # how far back --latest looks for a session's last complete row


def _latest_windows(prepared, strict=False):
    """(session index, first row) of each session's latest window. A session too short for one is
    skipped with a warning naming it (training skipped it too), or, with `strict`, refused. Without
    known-future columns it is the session's last `lookback` rows. With
    them, the rows after the data hold the known values of the days ahead and nothing else (the price
    not known yet): the window ends at the last row whose other inputs are known, and the rows its
    targets describe must be in the file."""
    window, columns = prepared.window, prepared.columns
    out, short = [], []
    for i, s in enumerate(prepared.catalog.sessions):
        end = s.n_rows - 1
        if columns.future_names:
            end = _last_complete_row(s, columns)
        if end + 1 < window.lookback:
            if strict:
                raise InputError(f"{s.path}: session {s.name!r} has {end + 1} rows of data, fewer than the run's "
                                 f"lookback ({window.lookback}); --latest needs its last {window.lookback} rows "
                                 "(without --strict such sessions are skipped with a warning)")
            short.append(f"{s.name} ({end + 1} rows)")
            continue
        first = end + 1 - window.lookback
        if columns.future_names:
            last_dated = int(window.dated_rows(np.array([first]), prepared.target_lead).max())
            if last_dated >= s.n_rows:
                raise InputError(
                    f"{s.path}: session {s.name!r}: --latest needs the values of {list(columns.future_names)} for "
                    f"the {window.horizon} step(s) after its last complete row {end} (through row {last_dated}); the "
                    f"file ends at row {s.n_rows - 1}; append rows with those columns filled (others empty)")
        out.append((i, first))
    if short:
        print(f"warning: --latest skipped {len(short)} session(s) with fewer rows than the run's lookback "
              f"({window.lookback}): {', '.join(short[:5])}{' ...' if len(short) > 5 else ''} (--strict refuses them)",
              file=sys.stderr)
    if not out:
        raise InputError(f"no session has the run's lookback of {window.lookback} rows; --latest has nothing "
                         "to predict")
    return out


def _last_complete_row(session, columns):
    """The last row whose inputs other than the known-future columns are all finite."""
    others = [c for c, name in zip(columns.feature_index, columns.feature_names) if name not in columns.future_names]
    lo = max(0, session.n_rows - FUTURE_TAIL_ROWS)
    values = session.read_rows(lo, session.n_rows)[:, others]
    complete = np.flatnonzero(np.isfinite(values).all(axis=1))
    if len(complete) == 0:
        raise InputError(f"{session.path}: session {session.name!r} has no row with every input known in its last "
                         f"{session.n_rows - lo} rows; --latest needs a complete row to forecast from")
    return lo + int(complete[-1])


def _latest_batches(prepared, chosen, batch_size):
    """(session ids, first rows, x normalized, None, future normalized or None) of each session's
    latest window (_latest_windows)."""
    window, columns = prepared.window, prepared.columns
    read, x_cols, _ = quality.column_positions(columns)
    for a in range(0, len(chosen), batch_size):
        ids = np.asarray([i for i, _ in chosen[a:a + batch_size]], np.int64)
        first_rows = np.asarray([first for _, first in chosen[a:a + batch_size]], np.int64)
        x = np.empty((len(ids), window.lookback, len(x_cols)), np.float32)          # (B, L, F)
        ahead = np.empty((len(ids), window.horizon, len(x_cols)), np.float32) if columns.future_names else None
        for j, (i, first) in enumerate(zip(ids, first_rows)):
            session = prepared.catalog.sessions[i]
            dated = window.dated_rows(np.array([first]), prepared.target_lead)[0] - first       # (H,) from `first`
            # One read: the window, and with known-future columns the rows ahead its targets describe.
            stop = int(first) + (max(window.lookback, int(dated[-1]) + 1) if ahead is not None else window.lookback)
            values = session.read_rows(int(first), stop)[:, read]
            if prepared.nan_policy == "ffill":
                quality.forward_fill(values[:window.lookback], session, int(first), read)
            x[j] = values[:window.lookback, x_cols]
            quality.check_finite(x[j], session, int(first), "features", columns.feature_names)
            if ahead is not None:
                ahead[j] = values[dated][:, x_cols]
                quality.check_finite(ahead[j][:, list(columns.future_positions)], session, int(first + dated[0]),
                                     "features", columns.future_names)
        session_ids = torch.as_tensor(ids)
        x_t = prepared.normalizer.normalize_features(torch.from_numpy(x), session_ids)
        future = None
        if ahead is not None:
            # Normalized as inputs (the other columns are unknown there and dropped right after).
            future = prepared.normalizer.normalize_features(torch.from_numpy(ahead), session_ids)
            future = future[:, :, list(columns.future_positions)]                       # (B, H, C)
        yield ids, first_rows, x_t, None, future


def _row_columns(prepared, ids, first_rows, stamped):
    """input_end_row, and when stamped input_end_time and target_time (NaT past the data)."""
    window = prepared.window
    end = window.last_input_row(first_rows)                                 # (B,)
    columns = {"input_end_row": end}
    if stamped:
        dated = window.dated_rows(first_rows, prepared.target_lead)          # (B, H) rows whose time dates a target
        times = _times(prepared.catalog.sessions, ids, np.concatenate([end[:, None], dated], axis=1))   # (B, 1 + H)
        columns["input_end_time"], columns["target_time"] = times[:, 0], times[:, 1:]
    return columns


def _times(sessions, ids, rows):
    """Timestamps (B, n) of rows (B, n) of the sessions `ids` (B,), NaT where a row is past the data:
    one contiguous read per session in the batch."""
    out = np.full(rows.shape, NAT, np.int64)
    for s in np.unique(ids):
        mask = ids == s
        n = sessions[int(s)].n_rows
        picked = rows[mask]
        inside = picked < n
        if inside.any():
            lo, hi = int(picked[inside].min()), int(picked[inside].max()) + 1
            stamps = sessions[int(s)].read_timestamps(lo, hi)
            picked_times = np.full(picked.shape, NAT, np.int64)
            picked_times[inside] = stamps[picked[inside] - lo]
            out[mask] = picked_times
    return out


def _known_truth(prepared, ids, first_rows):
    """Targets (B, H, K) in original units where their rows have them, NaN where they wait for
    their future (past the data, or past the session's labelled rows)."""
    columns, window = prepared.columns, prepared.window
    labelled = columns.target_source == "targets"
    rows = window.target_rows(first_rows)                                   # (B, H)
    truth = np.full(rows.shape + (len(columns.target_index),), np.nan, np.float32)
    for j, i in enumerate(ids):
        session = prepared.catalog.sessions[int(i)]
        known = rows[j][rows[j] < session.window_rows(labelled)]
        if len(known) == 0:
            continue
        lo, hi = int(known[0]), int(known[-1]) + 1
        if labelled:
            values = session.read_targets(lo, hi)[:, list(columns.target_index)]
        else:
            values = session.read_rows(lo, hi)[:, list(columns.target_index)]
        truth[j, :len(known)] = values
    return truth

