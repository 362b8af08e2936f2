"""`dirl summary` (the end of `make run`): readable lines from the stages' result files, the model beside the prior."""

from __future__ import annotations

import json

from dirl.summary import summary_lines


def _write(root, rel, obj):
    path = root / "results" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_reads_each_stage_and_says_whether_the_model_beats_the_prior(tmp_path):
    _write(tmp_path, "tune/summary.json", {"skipped": False, "metric": "val_iou", "best_value": 25.2863,
                                           "best": {"train.lr": 0.0025683, "train.weight_decay": 0.0}, "trials": 2,
                                           "trials_ok": 2, "trials_stopped": 0, "trials_failed": 0, "seconds": 92.3})
    _write(tmp_path, "train/info.json", {"best_epoch": 7, "epochs": 7, "val_iou": 22.29, "val_ap": 42.2,
                                         "images_per_s": 46.6})
    _write(tmp_path, "evaluate/scores.json", {"test": {
        "model": {"n": 1144, "AP": 57.82, "F1": 0.4526, "IoU": 35.78},
        "centre_prior": {"n": 1144, "AP": 38.67, "F1": 0.371, "IoU": 24.53}}})
    text = "\n".join(summary_lines(tmp_path))
    assert "tune     best val_iou 25.29 (lr=0.00257, weight_decay=0) of 2 trials (2 ok, 0 stopped, 0 failed)" in text
    assert "train    best epoch 7 of 7: val IoU 22.29" in text
    assert "the model beats the centred prior: IoU +11.25 points" in text
    _write(tmp_path, "evaluate/scores.json", {"test": {
        "model": {"n": 10, "AP": 30.0, "F1": 0.3, "IoU": 20.0},
        "centre_prior": {"n": 10, "AP": 38.0, "F1": 0.37, "IoU": 24.5}}})
    assert "does NOT beat the centred prior: IoU -4.50 points" in "\n".join(summary_lines(tmp_path))
