"""The files the train and tune stages leave in ``results/<stage>/``, and what they log of them to MLflow.

    train: model.pt, metrics.json (best val IoU + epoch), info.json (all figures), history.csv, learning_curve.png,
           run.json, config.yaml
    tune:  best.yaml, metrics.json (best score + trials), summary.json (all figures), trials.csv, config.yaml
Every file is written atomically (:mod:`dirl.io`).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Sequence

from dirl.config import Config, save_resolved
from dirl.io import atomic_path, write_json_atomic, write_text_atomic
from dirl.train.checkpoint import export_model, load_checkpoint
from dirl.train.search import current_values, metric_mode, pick_best, trial_config
from dirl.train.tuned import train_values, write_best_yaml
from dirl.train.worker import SCORE

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_ap", "val_f1", "val_iou", "lr"]


TRIAL_COLUMNS = ["trial_id", "status"]  # then the searched keys, the metric, epochs, seconds, run id, error


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def write_history_csv(history: list[dict], path: Path) -> Path:
    """One row per epoch (HISTORY_COLUMNS); empty cells where an epoch was not validated."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for row in history:
        w.writerow([int(row["epoch"])] + ["" if _num(row.get(k)) is None else f"{_num(row[k]):.6g}"
                                          for k in HISTORY_COLUMNS[1:]])
    write_text_atomic(path, buf.getvalue())
    return path


def plot_learning_curve(history: list[dict], path: Path) -> Path:
    """Train/val loss and validation IoU per epoch as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(ep, [_num(r.get("train_loss")) for r in history], "o-", label="train")
    val = [(r["epoch"], _num(r.get("val_loss"))) for r in history if _num(r.get("val_loss")) is not None]
    if val:
        ax1.plot(*zip(*val), "s-", label="val")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("DIRL loss")
    ax1.legend()
    iou = [(r["epoch"], _num(r.get("val_iou"))) for r in history if _num(r.get("val_iou")) is not None]
    if iou:
        ax2.plot(*zip(*iou), "s-", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val IoU (x100)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_trials_csv(path: Path, trials: list[dict], keys: Sequence[str], metric: str) -> Path:
    """One row per trial: id, status, searched values, final and best metric, epochs, seconds, run id, error."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + list(keys) + [metric, f"best_{metric}", "epochs", "seconds", "mlflow_run_id",
                                             "error"])
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))  # noqa: E731
    for t in trials:  # searched values at full precision (they are what a rerun would use), metrics rounded
        w.writerow([t["trial_id"], t["status"]] + ["" if t["values"].get(k) is None else str(t["values"][k])
                                                   for k in keys]
                   + [fmt(t["final"]), fmt(t["best"]), t["epochs"], fmt(t["seconds"]), t["run_id"], t["error"]])
    write_text_atomic(path, buf.getvalue())
    return path


def _best_checkpoint(result, select: str = "best"):
    """The reported checkpoint with the highest finite val_iou (the latest when none was validated);
    ``select="last"``: the last epoch's checkpoint."""
    if select == "last":
        return result.checkpoint, None
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if _num((m or {}).get(SCORE)) is not None]
    if not scored:
        return result.checkpoint, None
    return max(scored, key=lambda cm: cm[1][SCORE])


def write_train_outputs(cfg: Config, result, out_dir: Path, run, name: str, storage: str, resumed: bool,
                        fit_s: float, setup_s: float) -> dict:
    """model.pt, metrics.json, history.csv, learning_curve.png, run.json, config.yaml; and log them to the MLflow
    ``run`` (a :class:`dirl.tracking.Run`)."""
    from mlflow.entities import Metric

    client, run_id = run.client, run.run_id

    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d, restore_rng=False)
    history = state["history"]
    best_ckpt, best_metrics = _best_checkpoint(result, cfg.train.checkpoint)
    best_epoch = int(best_metrics["epoch"]) if best_metrics else state.get("best_epoch")
    if cfg.train.checkpoint == "last":
        best_epoch = int(history[-1]["epoch"])
    best_row = next((r for r in history if r["epoch"] == best_epoch), None) or history[-1]
    last = history[-1]
    metrics = {
        "best_epoch": int(best_row["epoch"]),
        "best_val_iou": _num(best_row.get("val_iou")),
        "val_iou": _num(best_row.get("val_iou")),
        "val_ap": _num(best_row.get("val_ap")),
        "val_f1": _num(best_row.get("val_f1")),
        "val_loss": _num(best_row.get("val_loss")),
        "epochs": int(last["epoch"]),
        "final_train_loss": _num(last.get("train_loss")),
        "images_per_s": _num(last.get("images_per_s")),
        "fit_s": round(fit_s, 2),
        "setup_s": round(setup_s, 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with best_ckpt.as_directory() as d:
        export_model(d, out_dir / "model.pt", metrics={k: metrics[k] for k in ("best_epoch", "val_iou", "val_ap",
                                                                              "val_f1")})
    write_json_atomic(out_dir / "info.json", metrics)  # everything; metrics.json: what `dvc metrics show` lists
    write_json_atomic(out_dir / "metrics.json", {"best_val_iou": metrics["best_val_iou"],
                                                 "best_epoch": metrics["best_epoch"]})
    write_history_csv(history, out_dir / "history.csv")
    plot_learning_curve(history, out_dir / "learning_curve.png")
    save_resolved(cfg, out_dir)
    run_info = {"run_id": run_id, "experiment_id": run.experiment_id, "tracking_uri": run.uri, "name": name,
                "storage_path": storage, "checkpoint": result.checkpoint.path, "best_checkpoint": best_ckpt.path,
                "resumed": resumed}

    ts = int(time.time() * 1000)
    step = metrics["epochs"]
    summary = [Metric(f"best_{k}", v, ts, step) for k, v in metrics.items()
               if k in ("val_iou", "val_ap", "val_f1", "val_loss") and v is not None]
    client.log_batch(run_id, metrics=summary)
    client.set_tag(run_id, "best_epoch", str(metrics["best_epoch"]))
    for f in ("config.yaml", "history.csv", "learning_curve.png", "metrics.json", "info.json"):
        client.log_artifact(run_id, str(out_dir / f))
    run_info.update(log_model(out_dir / "model.pt", run_id))  # run.json names the logged model register registers
    write_json_atomic(out_dir / "run.json", run_info)
    return {**run_info, "metrics": metrics, "history": history, "out_dir": str(out_dir), "fit_s": fit_s,
            "setup_s": setup_s}


def log_model(weights: Path, run_id: str) -> dict:
    """Log the weights once, as the run's MLflow logged model (pyfunc, ``models:/<model_id>``): ``dirl register``
    registers that same model (no second copy) and ``dirl predict --model <run id>`` loads it."""
    import mlflow

    from dirl.lifecycle.pyfunc import log_pyfunc

    from dirl.io import sha256_file

    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(weights, name="model", tags={"weights_sha256": sha256_file(weights)})
    return {"model_id": info.model_id, "logged_model_uri": info.model_uri}


def write_tune_outputs(cfg: Config, out: Path, trials: list[dict], keys: list[str], client, parent_id: str,
                       name: str, storage: str, max_concurrent: int, t0: float, fit_s: float) -> dict:
    """best.yaml (when a trial scored), trials.csv, summary.json, config.yaml; the best into the parent run."""
    from mlflow.entities import Metric, Param

    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    best = pick_best(trials, mode)
    counts = {s: sum(t["status"] == s for t in trials) for s in ("ok", "stopped", "failed")}
    best_values = {}
    if best is not None:  # the values as the trial's validated config holds them (types coerced)
        best_values = current_values(trial_config(cfg, best["values"], cfg.tune.epochs), keys)
        write_best_yaml(out / "best.yaml", train_values(cfg, best_values),
                        {"metric": metric, "mode": mode, "value": best["best"], "trial_id": best["trial_id"],
                         "mlflow_run_id": best["run_id"], "parent_run_id": parent_id, "skipped": False,
                         "searched": list(keys)})
    write_trials_csv(out / "trials.csv", trials, keys, metric)
    save_resolved(cfg, out)
    summary = {
        "skipped": False, "metric": metric, "mode": mode,
        "best_value": best["best"] if best else None, "best_trial": best["trial_id"] if best else None,
        "trials": len(trials), "trials_ok": counts["ok"], "trials_stopped": counts["stopped"],
        "trials_failed": counts["failed"], "max_concurrent": max_concurrent,
        "seconds": round(time.perf_counter() - t0, 2), "fit_s": round(fit_s, 2),
        "best": best_values, "parent_run_id": parent_id, "ray_run_name": name,
        "experiment_path": f"{storage.rstrip('/')}/{name}",
    }
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", {f"best_{metric}": summary["best_value"], "trials": len(trials)})

    ts = int(time.time() * 1000)
    metrics = [Metric(f"trials_{s}", float(n), ts, 0) for s, n in counts.items()]
    if best is not None:
        metrics.append(Metric(f"best_{metric}", float(best["best"]), ts, 0))
        client.log_batch(parent_id, metrics=metrics,
                         params=[Param(f"best.{k}", str(v)) for k, v in best_values.items()])
        client.set_tag(parent_id, "best_trial", best["trial_id"])
        client.set_tag(parent_id, "best_run_id", best["run_id"])
    else:
        client.log_batch(parent_id, metrics=metrics)
    for f in ("best.yaml", "trials.csv", "summary.json", "config.yaml"):
        if (out / f).is_file():
            client.log_artifact(parent_id, str(out / f))
    public = [{k: v for k, v in t.items() if k not in ("history", "result")} for t in trials]
    return {**summary, "trials_detail": public, "out_dir": str(out)}


def write_tune_skipped(cfg: Config, out: Path, keys: Sequence[str], t0: float,
                       reason: str = "tune.enabled is false") -> dict:
    """No search (``tune.enabled: false``, or every key set in params.yaml): best.yaml = the explicit values and
    defaults, nothing searched; a summary saying why."""
    values = train_values(cfg, {})
    write_best_yaml(out / "best.yaml", values, {"skipped": True, "reason": reason, "searched": []})
    write_trials_csv(out / "trials.csv", [], keys, cfg.tune.metric)
    save_resolved(cfg, out)
    summary = {"skipped": True, "reason": reason, "metric": cfg.tune.metric,
               "mode": metric_mode(cfg.tune.metric), "best_value": None, "best_trial": None, "trials": 0,
               "trials_ok": 0, "trials_stopped": 0, "trials_failed": 0,
               "seconds": round(time.perf_counter() - t0, 2), "best": values}
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", {"trials": 0})
    return {**summary, "out_dir": str(out)}

