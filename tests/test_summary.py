"""`dirl summary` (the end of `make run`): readable lines from the stages' result files, the model beside the prior."""

from __future__ import annotations

import json

from dirl.summary import summary_lines


def _write(root, rel, obj):
    path = root / "results" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_reads_each_stage_and_says_whether_the_model_beats_the_prior(tmp_path):
    _write(
        tmp_path,
        "tune/summary.json",
        {
            "skipped": False,
            "metric": "val_iou",
            "best_value": 25.2863,
            "best": {"train.lr": 0.0025683, "train.weight_decay": 0.0},
            "trials": 2,
            "trials_ok": 2,
            "trials_stopped": 0,
            "trials_failed": 0,
            "seconds": 92.3,
        },
    )
    _write(
        tmp_path,
        "train/info.json",
        {
            "selection": "last",
            "selected_epoch": 7,
            "epochs": 7,
            "selected_val_iou": 22.29,
            "selected_val_ap": 42.22,
            "best_epoch": 2,
            "best_val_iou": 26.43,
            "best_val_ap": 42.53,
            "images_per_s": 46.6,
        },
    )
    _write(
        tmp_path,
        "evaluate/scores.json",
        {
            "test": {
                "model": {"n": 1144, "AP": 57.82, "F1": 0.4526, "IoU": 35.78},
                "centre_prior": {"n": 1144, "AP": 38.67, "F1": 0.371, "IoU": 24.53},
            }
        },
    )
    text = "\n".join(summary_lines(tmp_path))
    assert "tune     best val_iou 25.29 (lr=0.00257, weight_decay=0) of 2 trials (2 ok, 0 stopped, 0 failed)" in text
    assert "train    exported epoch 7 of 7 (train.checkpoint: last): val IoU 22.29, val AP 42.22" in text
    assert "best over the epochs: val IoU 26.43 (epoch 2), val AP 42.53" in text
    assert "the model beats the centred prior: IoU +11.25 points" in text
    _write(
        tmp_path,
        "evaluate/scores.json",
        {
            "test": {
                "model": {"n": 10, "AP": 30.0, "F1": 0.3, "IoU": 20.0},
                "centre_prior": {"n": 10, "AP": 38.0, "F1": 0.37, "IoU": 24.5},
            }
        },
    )
    assert "does NOT beat the centred prior: IoU -4.50 points" in "\n".join(summary_lines(tmp_path))


def test_summary_prints_tables_not_python_reprs(tmp_path):
    _write(
        tmp_path, "preprocess/summary.json", {"rows": 626, "bad": 0, "splits": {"test": 76, "train": 500, "val": 50}}
    )
    _write(
        tmp_path,
        "synthesize/summary.json",
        {"composites": 1252, "real_images": 626, "methods": {"reinhard": 313, "fecker": 313, "xiao": 626}},
    )
    _write(
        tmp_path,
        "tune/summary.json",
        {
            "skipped": True,
            "reason": "tune.enabled is false",
            "best": {"train.lr": 0.0025, "train.lam": 2.0, "train.batch_size": 8},
        },
    )
    lines = summary_lines(tmp_path)
    text = "\n".join(lines)
    assert "{" not in text and "}" not in text and "'" not in text  # no dict reprs
    i = next(k for k, ln in enumerate(lines) if ln.startswith("data "))
    assert [ln.split() for ln in lines[i + 1 : i + 5]] == [
        ["split", "rows"],
        ["test", "76"],
        ["train", "500"],
        ["val", "50"],
    ]
    rows = lines[i + 1 : i + 5]
    assert len({len(ln) for ln in rows}) == 1  # values right-aligned in one column
    j = next(k for k, ln in enumerate(lines) if ln.startswith("synth "))
    assert lines[j + 1].split() == ["method", "composites"] and lines[j + 4].split() == ["xiao", "626"]
    assert "train.lr" in text and "0.0025" in text
