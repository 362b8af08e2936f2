"""Progress inside a training epoch: a line about every N seconds when the output is not a terminal."""

from __future__ import annotations

import io
import math

from dirl.progress import EpochProgress
from dirl.train.worker import epoch_line


def test_non_tty_progress_prints_a_line_every_interval(monkeypatch):
    clock = iter([0.0, 10.0, 31.0, 45.0, 62.0, 70.0])
    monkeypatch.setattr("dirl.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()  # not a TTY
    p = EpochProgress(3, 12, 100, world=2, every=30, stream=out)  # start at t=0
    for step in (10, 30, 45, 60, 70):
        p(step, step * 8, 1.5)  # 8 images per step on each of 2 workers
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at t=31 and t=62, not at 10, 45 or 70
    assert lines[0].startswith("epoch 3/12  step 30/100  loss 1.5000")
    assert "img/s" in lines[0] and "eta" in lines[0]
    rate = 30 * 8 * 2 / 31.0
    assert f"{rate:.1f} img/s" in lines[0]


def test_epoch_line_is_short_and_readable():
    row = {
        "epoch": 2,
        "train_loss": 12.5,
        "val_iou": 31.25,
        "val_ap": 50.0,
        "best_val_iou": 31.25,
        "images_per_s": 61.2,
        "epoch_s": 52.4,
    }
    line = epoch_line(row, 10)
    assert line == "epoch 2/10  train loss 12.5000  val IoU 31.2 AP 50.0 (best 31.2)  61.2 img/s  52s"
    assert "val" not in epoch_line({**row, "val_iou": math.nan}, 10)


def test_line_bar_off_a_terminal_prints_lines_not_carriage_returns(monkeypatch):
    from dirl.progress import LineBar

    now = [0.0]
    monkeypatch.setattr("dirl.progress.time.perf_counter", lambda: now[0])
    monkeypatch.setenv("DIRL_PROGRESS_EVERY", "30")
    out = io.StringIO()
    with LineBar(total=8, desc="synthesize", unit="img", stream=out) as bar:  # start at t=0
        for t in (5.0, 31.0, 40.0, 62.0):
            now[0] = t
            bar.update(2)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("synthesize: 4/8 img (50%)") and "eta" in lines[0]  # the t=31 line
    assert lines[-1].startswith("synthesize: 8/8 img (100%)")  # the closing line
    assert len(lines) == 2  # t=62 is the last update: the closing line reports it, no line twice


def test_bar_is_tqdm_on_a_terminal_and_lines_elsewhere(monkeypatch):
    import sys

    from dirl.progress import LineBar, bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "__stderr__", io.StringIO())
    assert isinstance(bar(total=3, desc="x"), LineBar)
    monkeypatch.setattr(sys, "__stderr__", Tty())
    assert not isinstance(bar(total=3, desc="x"), LineBar)
    assert list(bar(range(3), disable=True)) == [0, 1, 2]
