"""Per-session signals computed from a price column, in a pool of processes over sessions.

    rsi:N:LOW:HIGH   Wilder's RSI over N bars; the signal is 50 - RSI (higher = more oversold, so
                     expected to rise); the threshold rule is long below LOW, short above HIGH
    momentum:N       p(t) / p(t - N) - 1, over the session's own bars
    reversal:N       -(p(t) / p(t - N) - 1)
Every signal is oriented so that a higher value means a higher expected return.

Each worker opens the price file itself (DESIGN.md: h5py handles never cross a fork), walks
its sessions in pieces with the indicator's state carried between pieces (memory does not
grow with the history), and appends the signal to a session file of its own. Only session
names travel to a worker and only (name, rows) come back: nothing else is pickled.
"""

import dataclasses
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from errors import InputError

PIECE_ROWS = 1 << 16           # rows of one session read and computed at a time
KINDS = ("rsi", "momentum", "reversal")
POOLS = ("process", "thread", "serial")


@dataclasses.dataclass(frozen=True)
class SignalSpec:
    kind: str
    window: int
    low: float = 30.0
    high: float = 70.0

    @property
    def thresholds(self):
        """(long_above, short_below) of the threshold rule on this signal's scale."""
        if self.kind == "rsi":
            return 50.0 - self.low, 50.0 - self.high
        return 0.0, 0.0

    def __str__(self):
        return f"rsi:{self.window}:{self.low:g}:{self.high:g}" if self.kind == "rsi" else f"{self.kind}:{self.window}"


def parse_signal(text):
    """'rsi:14:30:70', 'momentum:20', 'reversal:1' -> SignalSpec; InputError naming the fix."""
    parts = str(text).split(":")
    usage = "use rsi:N:LOW:HIGH (e.g. rsi:14:30:70), momentum:N or reversal:N"
    if parts[0] not in KINDS:
        raise InputError(f"--signal {text!r}: unknown signal {parts[0]!r}; {usage}")
    allowed = (2, 4) if parts[0] == "rsi" else (2,)          # rsi:N takes the default 30/70
    if len(parts) not in allowed:
        raise InputError(f"--signal {text!r}: expected {allowed[-1] - 1} number(s) after {parts[0]!r}; {usage}")
    try:
        window = int(parts[1])
        low, high = (float(parts[2]), float(parts[3])) if len(parts) == 4 else (30.0, 70.0)
    except ValueError:
        raise InputError(f"--signal {text!r}: {':'.join(parts[1:])!r} are not numbers; {usage}") from None
    if window < 1:
        raise InputError(f"--signal {text!r}: the window must be at least 1 bar, got {window}")
    if parts[0] == "rsi" and not 0 <= low < high <= 100:
        raise InputError(f"--signal {text!r}: RSI thresholds need 0 <= LOW < HIGH <= 100, got {low:g} and {high:g}")
    return SignalSpec(parts[0], window, low, high)


class RSI:
    """Wilder's RSI, streamed: the first average is the mean of the first N changes, then
    avg = avg + (x - avg) / N. Output 50 - RSI; NaN until N changes are known."""

    def __init__(self, n):
        self.n = n
        self.last_price = None
        self.seen = 0                      # price changes seen
        self.gain = self.loss = 0.0        # running averages (sums while seeding)

    def __call__(self, price):
        price = np.asarray(price, np.float64)
        out = np.full(len(price), np.nan)
        known = np.flatnonzero(np.isfinite(price))          # a missing price is skipped, not used
        if len(known) == 0:
            return out
        p = price[known]
        prev = np.concatenate([[self.last_price if self.last_price is not None else np.nan], p[:-1]])
        change = p - prev
        if self.last_price is None:
            change, idx = change[1:], known[1:]
        else:
            idx = known
        self.last_price = p[-1]
        gain, loss = np.maximum(change, 0.0), np.maximum(-change, 0.0)
        rsi = np.full(len(change), np.nan)
        seed = min(max(self.n - self.seen, 0), len(change))
        if seed:                                             # still collecting the first N changes
            self.gain += gain[:seed].sum()
            self.loss += loss[:seed].sum()
            self.seen += seed
            if self.seen == self.n:
                self.gain /= self.n
                self.loss /= self.n
                rsi[seed - 1] = _rsi(self.gain, self.loss)
        if len(change) > seed:
            g, self.gain = _ema(gain[seed:], 1.0 / self.n, self.gain)
            l_, self.loss = _ema(loss[seed:], 1.0 / self.n, self.loss)
            rsi[seed:] = _rsi(g, l_)
            self.seen += len(change) - seed
        out[idx] = 50.0 - rsi
        return out


def _ema(x, a, start, piece=256):
    """y_t = (1 - a) y_{t-1} + a x_t from y = start, vectorized in pieces: within a piece
    y_t = c^t (start + a sum_{s<=t} c^-s x_s), c = 1 - a; pieces keep c^-s within float range and the
    terms are non-negative (gains, losses), so nothing cancels. Returns (y, last y). numpy only:
    scipy.signal.lfilter does the same but costs ~60 MB of memory to import in every process."""
    y = np.empty(len(x))
    c = 1.0 - a
    if c == 0.0:                         # N = 1: the average is the latest value
        y[:] = x
        return y, (x[-1] if len(x) else start)
    for i in range(0, len(x), piece):
        part = x[i:i + piece]
        powers = c ** np.arange(1, len(part) + 1)                         # c^t, t = 1 .. m
        y[i:i + piece] = powers * start + a * powers * np.cumsum(part / powers)
        start = y[i + len(part) - 1]
    return y, start


def _rsi(gain, loss):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(loss > 0, 100.0 - 100.0 / (1.0 + gain / np.where(loss > 0, loss, 1.0)),
                        np.where(gain > 0, 100.0, 50.0))


class Change:
    """p(t) / p(t - N) - 1 over the session's own known prices, streamed (sign -1: reversal)."""

    def __init__(self, n, sign=1.0):
        self.n, self.sign = n, sign
        self.tail = np.empty(0)

    def __call__(self, price):
        price = np.asarray(price, np.float64)
        out = np.full(len(price), np.nan)
        known = np.flatnonzero(np.isfinite(price))
        p = np.concatenate([self.tail, price[known]])
        start = len(self.tail)
        lagged = np.full(len(p), np.nan)
        lagged[self.n:] = p[:-self.n] if self.n < len(p) else np.empty(0)
        out[known] = self.sign * (p / lagged - 1.0)[start:]
        self.tail = p[-self.n:]
        return out


def indicator(spec):
    if spec.kind == "rsi":
        return RSI(spec.window)
    return Change(spec.window, 1.0 if spec.kind == "momentum" else -1.0)


# --- the pool ------------------------------------------------------------------------------------------

_worker = threading.local()     # per worker process (its main thread) or per thread of a thread pool


def _init_worker(price_paths, price_column, price_kind, spec, out_dir):
    from analysis.backtest.inputs import open_prices          # opened in the worker: no h5py handle crosses a fork
    _, sources = open_prices(price_paths, price_column, price_kind)
    _worker.sources, _worker.spec = sources, spec
    # One output file per worker (process or thread): an HDF5 file takes one writer. None: the
    # signals are small enough to send back as arrays.
    _worker.out = os.path.join(out_dir, f"signal-{os.getpid()}-{threading.get_ident()}.h5") if out_dir else None


def _key(name):
    """A session name as one HDF5 link name ('/' would make groups)."""
    return name.replace("%", "%25").replace("/", "%2F")


def _compute(names):
    """Worker task: some sessions' signals, each (name, float32 array) or, when spilling to this worker's
    file, (name, (path, dataset name)). The signal has the price session's rows, one value per row."""
    out = []
    f = h5py.File(_worker.out, "a") if _worker.out else None
    try:
        for name in names:
            source, calc = _worker.sources[name], indicator(_worker.spec)
            n = source.n_rows
            if f is not None:
                dest = f.create_dataset(_key(name), (n,), np.float32, chunks=(min(max(n, 1), PIECE_ROWS),))
            else:         # small: the session's times and prices come back too, so nothing is read twice
                dest, times_all, price_all = np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n)
            for start in range(0, n, PIECE_ROWS):
                stop = min(n, start + PIECE_ROWS)
                times, price = source.read(start, stop)
                check_prices(source, start, price)
                dest[start:stop] = calc(price)
                if f is None:
                    times_all[start:stop], price_all[start:stop] = times, price
            out.append((name, (_worker.out, _key(name)) if f is not None else (times_all, price_all, dest)))
    finally:
        if f is not None:
            f.close()
    return out


def check_prices(source, start, price):
    """A price <= 0 is an error naming the session and row (NaN is a missing bar, allowed)."""
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(price <= 0)
    if len(bad):
        raise InputError(f"{source.where}: row {start + int(bad[0])} has price {price[bad[0]]:g} (<= 0); prices "
                         "must be positive: give a price column (--price-column), or log returns with "
                         "--return-column")


class FileRows:
    """A spilled signal, read by row range from the worker's file (opened once, in this process)."""

    files = {}

    def __init__(self, path, key):
        self.path, self.key = path, key

    def read(self, start, stop):
        if not hasattr(self, "dataset"):               # opened on first read, kept (~0.1 ms an open)
            f = FileRows.files.get(self.path)
            if f is None:
                f = FileRows.files[self.path] = h5py.File(self.path, "r", rdcc_nbytes=0)
            self.dataset = f[self.key]
        return np.asarray(self.dataset[start:stop], np.float64)

    @classmethod
    def close_all(cls):
        for f in cls.files.values():
            f.close()
        cls.files = {}


def compute_signals(price_paths, price_column, price_kind, names, spec, spill_dir=None, *, workers=2,
                    pool="process", progress=None):
    """The signal of every session in `names`: ({name: row source}, {name: price source} or None). Small
    data comes back whole (signal, times and prices: the walk reads nothing again); with `spill_dir`,
    workers write the signals to files there and the walk reads the prices itself (None).
    `pool`: process (default), thread, or serial (this process only)."""
    from analysis.backtest.panel import ArrayPrices, ArrayRows
    if pool not in POOLS:
        raise InputError(f"--pool {pool!r} is unknown; choose {', '.join(POOLS)}")
    args = (price_paths, price_column, price_kind, spec, spill_dir)
    # Sessions go out in batches (a file open per batch, not per session), several per worker so
    # that uneven session lengths still spread.
    size = max(1, min(64, -(-len(names) // (4 * workers))))
    batches = [names[i:i + size] for i in range(0, len(names), size)]
    if pool == "process" and workers > 1:
        # fork: workers start with the parent's imports (shared pages, no second import); the parent
        # holds no open HDF5 file at this point (the catalog closed it), so no handle crosses.
        with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=args) as p:
            done = list(_collect(p.imap_unordered(_compute, batches), progress))
            p.close()
            p.join()
    elif pool == "thread" and workers > 1:
        with ThreadPoolExecutor(workers, initializer=_init_worker, initargs=args) as ex:
            done = list(_collect(ex.map(_compute, batches), progress))
    else:
        _init_worker(*args)
        done = list(_collect(map(_compute, batches), progress))
    if spill_dir:
        return {name: FileRows(*where) for name, where in done}, None
    where = {name: f"{price_paths[0]}: session {name!r}" for name, _ in done}
    return ({name: ArrayRows(signal) for name, (_, _, signal) in done},
            {name: ArrayPrices(name, times, price, where[name]) for name, (times, price, _) in done})


def _collect(done, progress):
    for batch in done:
        if progress:
            progress(len(batch))
        yield from batch
