"""Run `main.py train` under torchrun while recording what each rank trains on.

    torchrun --standalone --nproc_per_node 2 tests/helpers/ddp_probe.py OUT_DIR STOP_AT_STEP main.py-args...

Writes OUT_DIR/windows_rank<r>.json: per epoch, the (session, row) of every training
window this rank stepped on. With STOP_AT_STEP > 0 every rank sends itself SIGTERM
after that optimizer step (as torchrun does when it is stopped), to test resume.
"""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import main  # noqa: E402
from trainers.trainer import Trainer  # noqa: E402

out_dir, stop_at = Path(sys.argv[1]), int(sys.argv[2])
seen = {}
original_loss, original_step = Trainer._loss, Trainer._optimizer_step


def recording_loss(self, batch):
    seen.setdefault(self.epoch, []).extend(zip(batch.session.tolist(), batch.row.tolist()))
    return original_loss(self, batch)


def stopping_step(self, loss, batch):
    stepped = original_step(self, loss, batch)
    if self.step == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return stepped


Trainer._loss = recording_loss
Trainer._optimizer_step = stopping_step
code = main.main(sys.argv[3:])
rank = int(os.environ.get("RANK", "0"))
(out_dir / f"windows_rank{rank}.json").write_text(json.dumps(seen))
sys.exit(code)
