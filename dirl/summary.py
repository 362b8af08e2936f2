"""The closing summary of ``make run``: what the pipeline produced and where to look next."""

from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(name: str, m: dict) -> str:
    return f"  {name:<14} n={m.get('n', '?'):>5}  AP {m['AP']:6.2f}  F1 {m['F1']:.4f}  IoU {m['IoU']:6.2f}"


def summary_lines(root: Path) -> list[str]:
    r = root / "results"
    lines = ["", "=" * 72, "DIRL pipeline summary", "=" * 72]
    data = _load(r / "synthesize" / "summary.json")
    prep = _load(r / "preprocess" / "summary.json")
    if prep:
        lines.append(f"data     {prep['rows']} source rows in data/shards ({prep.get('splits')}), "
                     f"{prep.get('bad', 0)} bad (results/preprocess/issues.json)")
    if data:
        lines.append(f"synth    {data['composites']} composites in data/synth from {data['real_images']} photos "
                     f"({data.get('methods')})")
    tune = _load(r / "tune" / "summary.json")
    if tune and tune.get("skipped"):
        lines.append(f"tune     skipped ({tune.get('reason')}); train uses {tune.get('best')}")
    elif tune:
        best = ", ".join(f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in (tune.get("best") or {}).items())
        lines.append(f"tune     best {tune.get('metric')} {tune.get('best_value') or float('nan'):.2f} ({best}) of "
                     f"{tune.get('trials')} trials ({tune.get('trials_ok')} ok, {tune.get('trials_stopped')} stopped, "
                     f"{tune.get('trials_failed')} failed) in {tune.get('seconds', 0):.0f} s")
    train = _load(r / "train" / "info.json")
    if train:
        lines.append(f"train    best epoch {train.get('best_epoch')} of {train.get('epochs')}: "
                     f"val IoU {train.get('val_iou') or float('nan'):.2f}, val AP {train.get('val_ap') or float('nan'):.2f}"
                     f" ({train.get('images_per_s') or 0:.1f} img/s)")
    ev = _load(r / "evaluate" / "scores.json")
    if ev:
        lines.append("evaluate (model beside the centred-prior baseline on the same images)")
        for name, sets in ev.items():
            if isinstance(sets, dict) and "model" in sets:
                lines.append(f" {name}:")
                lines.append(_row("model", sets["model"]))
                if "centre_prior" in sets:
                    lines.append(_row("centre prior", sets["centre_prior"]))
                    d_iou = sets["model"]["IoU"] - sets["centre_prior"]["IoU"]
                    d_ap = sets["model"]["AP"] - sets["centre_prior"]["AP"]
                    verdict = "beats" if d_iou > 0 else "does NOT beat"
                    lines.append(f"  -> the model {verdict} the centred prior: IoU {d_iou:+.2f} points, "
                                 f"AP {d_ap:+.2f} points")
    reg = _load(r / "register" / "model.json")
    if reg:
        lines.append(f"register {reg['model_uri']} (@{reg.get('alias')}), run {reg.get('run_id')}")
    lines += [
        "",
        "Next:",
        "  make mlflow-ui                          browse runs at http://127.0.0.1:5000",
        "  .venv/bin/dvc metrics show; .venv/bin/dvc plots show   metrics and curves (dvc_plots/index.html)",
        "  .venv/bin/dirl promote                  move @champion to the new @challenger if it is better",
        f"  .venv/bin/dirl predict IMG --model models:/{reg['name'] if reg else 'dirl'}@challenger --out preds/",
        "  .venv/bin/dirl data show                contact sheet of synthesized composites",
        "  notebooks/walkthrough.ipynb             the guided tour",
    ]
    return lines


def print_summary(root: Path = Path(".")) -> None:
    print("\n".join(summary_lines(Path(root))))
