"""Progress on the console: every long loop of the pipeline reports through here.

On a terminal: a tqdm bar. Elsewhere (CI, ``dvc repro`` logs): one short line about every ``DIRL_PROGRESS_EVERY``
seconds (default 30) and one at the end, never a carriage-return bar, e.g.::

    epoch 3/12  step 120/310  loss 1.8423  41.2 img/s  eta 4m36s      (EpochProgress, rank 0 of training)
    synthesize: 312/626 img (50%)  14.1 img/s  eta 22s                  (bar(), data stages, evaluation, predict)
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


def verbose() -> bool:
    """``dirl -v`` / ``$DIRL_VERBOSE``: Ray's, Tune's and MLflow's own console output, and per-item lines."""
    return bool(os.environ.get("DIRL_VERBOSE"))


def _every() -> float:
    return float(os.environ.get("DIRL_PROGRESS_EVERY", "30"))


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class EpochProgress:
    """Callable ``progress(steps, images, mean_loss)`` for :func:`dirl.train.epoch.train_one_epoch`."""

    def __init__(self, epoch: int, epochs: int, steps: int, world: int = 1, every: float | None = None, stream=None):
        self.epoch, self.epochs, self.steps, self.world = epoch, epochs, steps, world
        self.stream = stream or sys.__stderr__ or sys.stderr
        self.every = _every() if every is None else every
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
            emit(
                f"epoch {self.epoch}/{self.epochs}  step {steps}/{self.steps}  loss {loss:.4f}  "
                f"{rate:.1f} img/s  eta {_eta(eta)}",
                self.stream,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LineBar:
    """tqdm's ``update`` / iteration / context-manager surface, printing a line every ``DIRL_PROGRESS_EVERY`` s."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", unit: str = "it", stream=None):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.stream = stream or sys.__stderr__ or sys.stderr
        self.n, self.start = 0, time.perf_counter()
        self.last = self.start

    def _line(self) -> str:
        rate = self.n / max(time.perf_counter() - self.start, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f"  eta {_eta((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        return f"{self.desc}: {done} {self.unit}{pct}  {rate:.1f} {self.unit}/s{eta}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= _every() and (not self.total or self.n < self.total):
            self.last = now
            emit(self._line(), self.stream)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        if self.n:
            emit(self._line(), self.stream)
            self.n = 0 if self.total is None else self.n

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False):
    """A progress bar: tqdm on a terminal, :class:`LineBar` elsewhere, nothing when ``disable`` (an iterable is
    returned as it is)."""
    stream = sys.__stderr__ or sys.stderr
    if disable or os.environ.get("TQDM_DISABLE"):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, file=stream)
    return LineBar(iterable, total=total, desc=desc, unit=unit, stream=stream)
