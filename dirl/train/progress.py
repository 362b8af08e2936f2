"""Progress inside a training epoch, printed by rank 0.

On a terminal: a tqdm bar with steps, img/s and ETA. Elsewhere (CI, ``dvc repro`` logs): one short line about
every ``DIRL_PROGRESS_EVERY`` seconds (default 30), e.g.::

    epoch 3/12  step 120/310  loss 1.8423  41.2 img/s  eta 4m36s
"""

from __future__ import annotations

import os
import sys
import time


def emit(line: str, stream=None) -> None:
    """Write one console line. Ray Train patches ``print`` in workers into its logger, which reaches the console
    twice; writing to the process's real stderr shows it once (Ray forwards worker stderr to the driver)."""
    stream = stream or sys.__stderr__ or sys.stderr
    stream.write(line + "\n")
    stream.flush()


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class EpochProgress:
    """Callable ``progress(steps, images, mean_loss)`` for :func:`dirl.train.loop.train_one_epoch`."""

    def __init__(self, epoch: int, epochs: int, steps: int, world: int = 1, every: float | None = None,
                 stream=None):
        self.epoch, self.epochs, self.steps, self.world = epoch, epochs, steps, world
        self.stream = stream or sys.__stderr__ or sys.stderr
        self.every = float(os.environ.get("DIRL_PROGRESS_EVERY", "30")) if every is None else every
        self.start = self.last = time.perf_counter()
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, file=self.stream)

    def __call__(self, steps: int, images: int, loss: float) -> None:
        now = time.perf_counter()
        rate = images * self.world / max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(steps - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            return
        if now - self.last >= self.every and steps < self.steps:
            self.last = now
            eta = (self.steps - steps) * (now - self.start) / max(steps, 1)
            emit(f"epoch {self.epoch}/{self.epochs}  step {steps}/{self.steps}  loss {loss:.4f}  "
                 f"{rate:.1f} img/s  eta {_eta(eta)}", self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
