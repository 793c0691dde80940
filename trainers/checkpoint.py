"""Checkpoints: `last` and `best`, each written to a temp file, fsynced and renamed.

A checkpoint holds everything a resumed run needs: model, optimizer, scheduler and
grad-scaler states, the loader position, RNG state, epoch/step counters, the
normalizer and the resolved config. It is loaded with `weights_only=True`, so it
holds only tensors and plain containers, never pickled code.
"""

import errno
import shutil
import zipfile

import torch

from atomic import atomic_path
from errors import InputError
from trainers.rundir import RunDir

NAMES = ("last", "best")


class Checkpointer:
    def __init__(self, run_dir):
        self.dir = RunDir(run_dir).checkpoints

    def path(self, name):
        return self.dir / f"{name}.pt"

    def save(self, name, state):
        """Write `state` as checkpoint `name`; the previous one stays intact on any failure."""
        target = self.path(name)
        try:
            with atomic_path(target, space=False, own_errors=True) as tmp:
                torch.save(state, tmp)
        except (OSError, RuntimeError) as exc:
            # A full disk reaches us as OSError(ENOSPC), or, when torch's zip writer hits it, as
            # RuntimeError("[enforce fail at inline_container.cc] unexpected pos ..."): measured on
            # a full tmpfs (benchmarks/faults.py). Other RuntimeErrors are bugs: re-raised.
            if isinstance(exc, RuntimeError) and "inline_container" not in str(exc):
                raise
            full = getattr(exc, "errno", None) == errno.ENOSPC or self._no_room_for_another()
            reason = "no space left on device" if full else getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            hint = "free some space or set output.runs_dir elsewhere" if full else \
                "check that the run directory is writable"
            raise InputError(f"{target}: cannot write the checkpoint ({reason}); {hint}; "
                             "the previous checkpoint is intact") from None
        return target

    @staticmethod
    def expected_bytes(model):
        """About the size of one checkpoint of `model`: its weights and AdamW's two moments (4 bytes each a
        parameter) and 64 KiB of the rest (config, normalizer, RNG and loader states)."""
        return 12 * sum(p.numel() for p in model.parameters()) + (1 << 16)

    def _no_room_for_another(self):
        """Less free space than the largest checkpoint already written: the next one cannot fit."""
        sizes = [self.path(n).stat().st_size for n in NAMES if self.path(n).exists()]
        return bool(sizes) and shutil.disk_usage(self.dir).free < max(sizes)

    def remove_stale_temps(self):
        """Delete temp files left by a writer that was killed mid-write (SIGKILL skips the
        cleanup); called when a run (re)starts, the one time no checkpoint is being written."""
        for name in NAMES:
            for tmp in self.dir.glob(f".{name}.pt.tmp-*"):
                tmp.unlink(missing_ok=True)

    def exists(self, name):
        return self.path(name).exists()

    def load(self, name, map_location="cpu"):
        target = self.path(name)
        if not target.exists():
            raise InputError(f"{target}: no checkpoint; train first, or check --run / --resume")
        damage = check_archive(target)
        if damage:
            raise InputError(f"{target}: the checkpoint is damaged ({damage}); use the other checkpoint "
                             "(--checkpoint last/best) or retrain") from None
        try:
            return torch.load(target, map_location=map_location, weights_only=True)
        except Exception as exc:  # a damaged file raises several types (RuntimeError, EOFError, UnpicklingError)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else "")
            # torch's own text may ask to file an issue with PyTorch: not the user's remedy here
            reason = reason.split(" Please ")[0].split(" please file")[0].rstrip(" .,")[:200]
            raise InputError(f"{target}: the checkpoint cannot be read ({reason}); it is damaged or holds "
                             "more than weights; use the other checkpoint (last/best) or retrain") from None


def check_archive(path):
    """Why the checkpoint archive at `path` is damaged, or None: torch.save writes a zip whose members
    carry CRC-32s, but torch.load never checks them, so flipped bytes in the weights loaded silently.
    Reads the file once (zipfile.testzip)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a complete archive: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    except Exception as exc:             # zlib or struct errors on a mangled member header
        return f"unreadable archive: {str(exc).splitlines()[0][:120]}"
    return None if bad is None else f"CRC mismatch in {bad}: bytes changed since it was written"
