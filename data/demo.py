"""Synthetic market-like sessions: the built-in demo data (no download needed).

Each session is one "stock" of minute bars. A hidden AR(1) signal drives the
next return a little; volatility moves in slow regimes. Features are the
return, its absolute value, log volume and noisy views of the hidden signal, so
a model can learn something real but small, as with markets. The target is the
next bar's log return (a label at its own row: docs/data_format.md).
Sessions are generated and written in pieces, so the 90M-row preset streams.
"""

import logging
from pathlib import Path

import h5py
import numpy as np
from scipy.signal import lfilter
from tqdm import tqdm

from atomic import SpaceGuard, atomic_path
from data.catalog import write_index
from data.layout import ATTR_TARGET_LEAD, COMPRESSIONS, LIBVER, SessionWriter
from errors import InputError

log = logging.getLogger("h5series")

PRESETS = {
    # 3 years x 252 days x 240 minutes per day ~ 181k rows; x 500 stocks ~ 90M rows (~6 GB float32 at 16 features)
    "market-500x3y": {"sessions": 500, "rows": 181_440, "features": 16},
    "demo": {"sessions": 16, "rows": 20_000, "features": 8},
}
PIECE_ROWS = 1 << 18           # rows generated and written at a time
MINUTE_NS = 60 * 1_000_000_000
START_NS = int(np.datetime64("2020-01-02T09:30", "ns").astype(np.int64))


def _ar1(noise, phi, state):
    """AR(1) filter y_t = phi * y_{t-1} + noise_t, continuing from `state` (lfilter's zi)."""
    out, zf = lfilter([1.0], [1.0, -phi], noise, zi=state)
    return out, zf


def _session_pieces(rng, rows, n_features):
    """Yield (features (n, F), target (n, 1), timestamps (n,)) pieces of one session."""
    signal_state, vol_state = np.zeros(1), np.zeros(1)
    noise_levels = np.linspace(0.5, 3.0, max(1, n_features - 3))
    base_vol = rng.uniform(0.0005, 0.002)
    prev_signal = None
    for start in range(0, rows + 1, PIECE_ROWS):
        # One extra row at the very end gives the last row its next-bar target.
        n = min(PIECE_ROWS, rows + 1 - start)
        if n <= 0:
            break
        signal, signal_state = _ar1(rng.normal(0, 0.2, n), 0.98, signal_state)      # (n,) hidden alpha
        log_vol, vol_state = _ar1(rng.normal(0, 0.05, n), 0.995, vol_state)         # (n,) slow regimes
        vol = base_vol * np.exp(log_vol)
        # Return of bar t is nudged by the signal at t-1: predictable one step ahead.
        lagged = np.concatenate([[0.0 if prev_signal is None else prev_signal[0]], signal[:-1]])
        returns = vol * (0.08 * lagged + rng.standard_normal(n))
        prev_signal = signal[-1:]
        volume = np.log1p(rng.gamma(2.0, 500.0, n) * (1 + 50 * np.abs(returns)))
        views = signal[:, None] + rng.standard_normal((n, len(noise_levels))) * noise_levels
        feats = np.column_stack([returns / base_vol, np.abs(returns) / base_vol, volume, views])
        feats = feats[:, :n_features].astype(np.float32)                            # (n, F)
        yield feats, returns, start


def generate(out, *, sessions=16, rows=20_000, features=8, seed=0, compression="none",
             overwrite=True, progress=True):
    """Write the demo dataset to `out` (atomically). Returns a summary dict."""
    if sessions < 1 or rows < 2 or features < 1:
        raise InputError(f"make-demo needs --sessions >= 1, --rows >= 2, --features >= 1; got "
                         f"{sessions}, {rows}, {features}")
    if compression not in COMPRESSIONS:
        raise InputError(f"--compression {compression!r} is unknown; choose {', '.join(COMPRESSIONS)}")
    names = ["ret", "abs_ret", "log_volume"] + [f"signal_{i}" for i in range(max(0, features - 3))]
    names = names[:features]
    rng = np.random.default_rng(seed)
    need = sessions * rows * (features * 4 + 4 + 8) if compression == "none" else 0    # (compressed: less)
    guard = SpaceGuard(out, "demo data")
    with atomic_path(out, replace=overwrite, need=need, what="demo data") as tmp:
        with h5py.File(tmp, "w", libver=LIBVER) as h5file:
            for s in tqdm(range(sessions), desc=f"make-demo {out}", unit="session", disable=None if progress else True):
                writer = SessionWriter(h5file, f"stock_{s:04d}", names, ["next_log_return"],
                                       with_timestamps=True, compression=compression)
                carry = None
                for feats, returns, start in _session_pieces(np.random.default_rng(rng.integers(2**63)),
                                                             rows, features):
                    # The target of row t is the return of bar t + 1.
                    if carry is not None:
                        writer.append(carry[0], np.array([[returns[0]]], np.float32), carry[1])
                    n = len(feats)
                    stamps = START_NS + (start + np.arange(n, dtype=np.int64)) * MINUTE_NS
                    keep = n - 1
                    writer.append(feats[:keep], returns[1:n, None].astype(np.float32), stamps[:keep])
                    carry = (feats[keep:], stamps[keep:])
                    guard.check()
                writer.set_attrs(**{ATTR_TARGET_LEAD: 1})     # row t's target is bar t + 1's return
                writer.close()
        write_index(tmp)
    return {"out": str(out), "sessions": sessions, "rows": rows, "features": names}


def ensure_demo(data_cfg):
    """A run on the built-in demo data (config.DEMO_PATH) on a fresh clone makes the file first; True when made."""
    from config import DEMO_PATH
    if list(data_cfg.paths) != [DEMO_PATH] or Path(DEMO_PATH).exists():
        return False
    log.info("demo data missing: generating %s", DEMO_PATH)
    generate(DEMO_PATH, **PRESETS["demo"])
    return True


def make_demo(out, preset=None, *, seed=0, compression="none", overwrite=False, **sizes):
    """`make-demo`: a preset's sessions (demo by default) with any of its sizes (sessions, rows, features)
    given instead (None: the preset's), written to `out`, which is checked first."""
    from atomic import check_output
    from data.catalog import HDF5_SUFFIXES
    chosen = PRESETS.get(preset or "demo")
    if chosen is None:
        raise InputError(f"--preset {preset!r} is unknown; choose {', '.join(PRESETS)}")
    sizes = {k: sizes[k] if sizes.get(k) is not None else v for k, v in chosen.items()}
    check_output(out, overwrite, suffixes=HDF5_SUFFIXES)     # a user's file is not replaced unasked
    return generate(out, seed=seed, compression=compression, overwrite=overwrite, **sizes)
