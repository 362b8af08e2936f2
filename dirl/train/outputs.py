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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dirl.config import Config, save_resolved
from dirl.data.loader import ShardDataset
from dirl.io import atomic_path, write_json_atomic, write_text_atomic
from dirl.metrics import MetricAccumulator, centre_prior
from dirl.summary import margin_line
from dirl.tracking import metric_name
from dirl.train.best_yaml import train_values, write_best_yaml
from dirl.train.checkpoint import export_model, load_checkpoint
from dirl.train.search import current_values, margin_verdict, metric_mode, pick_best, trial_config
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
        w.writerow(
            [int(row["epoch"])]
            + ["" if _num(row.get(k)) is None else f"{_num(row[k]):.6g}" for k in HISTORY_COLUMNS[1:]]
        )
    write_text_atomic(path, buf.getvalue())
    return path


def draw_learning_curve(
    history: list[dict], selected_epoch: int | None = None, rule: str | None = None, prior_iou: float | None = None
):
    """The learning curve, unsaved: ``(fig, (loss_ax, iou_ax))``. Left: train and val loss per epoch; right: val
    IoU per epoch, with the centred prior's val IoU on the same images (``prior_iou``) as a dashed horizontal
    line. Both panels mark the exported epoch (``selected_epoch``, chosen by ``train.checkpoint`` = ``rule``)
    with a dotted vertical line, named in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(ep, [_num(r.get("train_loss")) for r in history], "o-", color="tab:blue", label="train loss")
    val = [(r["epoch"], _num(r.get("val_loss"))) for r in history if _num(r.get("val_loss")) is not None]
    if val:
        ax1.plot(*zip(*val), "s-", color="tab:orange", label="val loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("DIRL loss")
    ax1.set_title("loss", fontsize=10)
    iou = [(r["epoch"], _num(r.get("val_iou"))) for r in history if _num(r.get("val_iou")) is not None]
    if iou:
        ax2.plot(*zip(*iou), "s-", color="tab:green", label="model val IoU")
    if prior_iou is not None and math.isfinite(prior_iou):
        ax2.axhline(prior_iou, color="tab:gray", ls="--", lw=1.4, label=f"centred prior val IoU ({prior_iou:.2f})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("val IoU (x100)")
    ax2.set_title("validation IoU", fontsize=10)
    if selected_epoch is not None:
        how = f" (train.checkpoint: {rule})" if rule else ""
        for ax in (ax1, ax2):
            ax.axvline(selected_epoch, color="tab:red", ls=":", lw=1.6, label=f"exported epoch {selected_epoch}{how}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ep:  # the first and last epochs (and a marker on them) inside the frame
            ax.set_xlim(min(ep) - 0.4, max(ep) + 0.4)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, (ax1, ax2)


def plot_learning_curve(
    history: list[dict],
    path: Path,
    selected_epoch: int | None = None,
    rule: str | None = None,
    prior_iou: float | None = None,
) -> Path:
    """:func:`draw_learning_curve` as a PNG at ``path`` (matplotlib, Agg), written atomically."""
    import matplotlib.pyplot as plt

    fig, _ = draw_learning_curve(history, selected_epoch, rule, prior_iou)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_trials_csv(path: Path, trials: list[dict], keys: Sequence[str], metric: str) -> Path:
    """One row per trial: id, status, searched values, final and best metric, epochs, seconds, run id, error."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIAL_COLUMNS + list(keys) + [metric, f"best_{metric}", "epochs", "seconds", "mlflow_run_id", "error"])
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))  # noqa: E731
    for t in trials:  # searched values at full precision (they are what a rerun would use), metrics rounded
        w.writerow(
            [t["trial_id"], t["status"]]
            + ["" if t["values"].get(k) is None else str(t["values"][k]) for k in keys]
            + [fmt(t["final"]), fmt(t["best"]), t["epochs"], fmt(t["seconds"]), t["run_id"], t["error"]]
        )
    write_text_atomic(path, buf.getvalue())
    return path


def epoch_figures(history: list[dict], selected_epoch: int, rule: str) -> dict:
    """What the train stage reports of its epochs, two kinds kept apart:

    ``best_*``: the true extreme over every validated epoch, each on its own (``best_val_iou``, ``best_val_ap``,
    ``best_val_f1`` the maximum, ``best_val_loss`` the minimum) and ``best_epoch`` the epoch of the highest val IoU;
    ``selected_*``: the figures of the epoch that was exported (``selected_epoch``, by ``train.checkpoint``: the
    best by val IoU, or the last), and ``selection`` naming that rule. With ``rule="best"`` the two IoUs agree."""

    def column(key: str) -> list[tuple[int, float]]:
        return [(int(r["epoch"]), v) for r in history if (v := _num(r.get(key))) is not None]

    row = next((r for r in history if int(r["epoch"]) == int(selected_epoch)), None) or history[-1]
    iou = column("val_iou")
    figures = {
        "selection": rule,
        "selected_epoch": int(row["epoch"]),
        "best_epoch": max(iou, key=lambda ev: (ev[1], -ev[0]))[0] if iou else None,
    }
    for key in ("val_iou", "val_ap", "val_f1", "val_loss"):
        values = [v for _, v in column(key)]
        pick = min if key == "val_loss" else max
        figures[f"best_{key}"] = pick(values) if values else None
        figures[f"selected_{key}"] = _num(row.get(key))
    return figures


def val_prior(data_dirs: Sequence, size: int) -> float | None:
    """Validation IoU (x100) of the centred Gaussian prior on the validation composites that training validated
    on, at ``size``: the reference line of the val IoU curve. None without validation rows."""
    import torch

    ds = ShardDataset([str(d) for d in data_dirs], "val", size, train=False)
    if len(ds) == 0:
        return None
    acc = MetricAccumulator()
    for batch in ds.iter_batches(8):
        m = (batch["mask"] > 0.5).float()
        b, _, h, w = m.shape
        acc.update(torch.from_numpy(centre_prior(h, w)).expand(b, 1, h, w), m, batch["id"])
    return float(acc.compute()["IoU"])


def train_note(cfg: Config, metrics: dict, data: str, prior: float | None) -> str:
    """The train run's one-line description (``mlflow.note.content``): what, on what, the outcome beside the
    centred prior."""
    nan = float("nan")
    against = f" against {prior:.2f} for the centred prior" if prior is not None else ""
    return (
        f"Trained {cfg.model.name} at {cfg.model.input_size} px for {metrics['epochs']} epochs on {data}: "
        f"exported epoch {metrics['selected_epoch']} (train.checkpoint: {metrics['selection']}) with val IoU "
        f"{metrics['selected_val_iou'] if metrics['selected_val_iou'] is not None else nan:.2f}{against}; "
        f"best val IoU {metrics['best_val_iou'] if metrics['best_val_iou'] is not None else nan:.2f} at epoch "
        f"{metrics['best_epoch']}. Test figures: the evaluation runs tagged dirl.train_run_id = this run."
    )


def _best_checkpoint(result, select: str = "best"):
    """The reported checkpoint with the highest finite val_iou (the latest when none was validated);
    ``select="last"``: the last epoch's checkpoint."""
    if select == "last":
        return result.checkpoint, None
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if _num((m or {}).get(SCORE)) is not None]
    if not scored:
        return result.checkpoint, None
    return max(scored, key=lambda cm: cm[1][SCORE])


def write_train_outputs(
    cfg: Config,
    result,
    out_dir: Path,
    run,
    name: str,
    storage: str,
    resumed: bool,
    fit_s: float,
    setup_s: float,
    data_dirs: Sequence = (),
    log_model: Callable[[Path, str], dict] | None = None,
) -> dict:
    """model.pt, metrics.json, history.csv, learning_curve.png, run.json, config.yaml; and log them to the MLflow
    ``run`` (a :class:`dirl.tracking.Run`), with the centred prior's val IoU on ``data_dirs``' validation rows
    as the reference (``val/prior_IoU``) and a one-line description."""
    from mlflow.entities import Metric

    client, run_id = run.client, run.run_id

    with result.checkpoint.as_directory() as d:
        state = load_checkpoint(d, restore_rng=False)
    history = state["history"]
    rule = cfg.train.checkpoint
    best_ckpt, best_metrics = _best_checkpoint(result, rule)
    exported = int(best_metrics["epoch"]) if best_metrics else (state.get("best_epoch") or history[-1]["epoch"])
    if rule == "last":
        exported = int(history[-1]["epoch"])
    last = history[-1]
    metrics = {
        **epoch_figures(history, exported, rule),
        "epochs": int(last["epoch"]),
        "final_train_loss": _num(last.get("train_loss")),
        "images_per_s": _num(last.get("images_per_s")),
        "fit_s": round(fit_s, 2),
        "setup_s": round(setup_s, 2),
        "val_prior_iou": val_prior(data_dirs, cfg.model.input_size) if data_dirs else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with best_ckpt.as_directory() as d:
        export_model(
            d,
            out_dir / "model.pt",
            metrics={
                "selection": rule,
                "selected_epoch": metrics["selected_epoch"],
                "val_iou": metrics["selected_val_iou"],
                "val_ap": metrics["selected_val_ap"],
                "val_f1": metrics["selected_val_f1"],
                "best_epoch": metrics["best_epoch"],
                "best_val_iou": metrics["best_val_iou"],
            },
        )
    write_json_atomic(out_dir / "info.json", metrics)  # everything; metrics.json: what `dvc metrics show` lists
    write_json_atomic(
        out_dir / "metrics.json",
        {  # two columns of `dvc metrics show` (the epochs: info.json)
            k: None if metrics[k] is None else round(metrics[k], 4) for k in ("selected_val_iou", "best_val_iou")
        },
    )
    write_history_csv(history, out_dir / "history.csv")
    plot_learning_curve(
        history, out_dir / "learning_curve.png", metrics["selected_epoch"], rule, metrics["val_prior_iou"]
    )
    save_resolved(cfg, out_dir)
    run_info = {
        "run_id": run_id,
        "experiment_id": run.experiment_id,
        "tracking_uri": run.uri,
        "name": name,
        "storage_path": storage,
        "checkpoint": result.checkpoint.path,
        "best_checkpoint": best_ckpt.path,
        "resumed": resumed,
    }

    ts = int(time.time() * 1000)
    step = metrics["epochs"]

    summary = [
        Metric(metric_name(k), v, ts, step)
        for k, v in metrics.items()
        if k.startswith(("best_val_", "selected_val_")) and v is not None and k not in history[-1]
    ]  # best_val_iou is already a curve (the best so far, every epoch)
    prior = metrics["val_prior_iou"]
    if prior is not None:  # a flat reference line under the val IoU curve, one point per epoch
        done = {int(m.step) for m in client.get_metric_history(run_id, "val/prior_IoU")}
        summary += [Metric("val/prior_IoU", prior, ts, int(r["epoch"])) for r in history if int(r["epoch"]) not in done]
    client.log_batch(run_id, metrics=summary)
    for key in ("selection", "selected_epoch", "best_epoch"):  # tags: a resumed run may move them
        client.set_tag(run_id, key, str(metrics[key]))
    data = ", ".join(Path(str(d)).name for d in data_dirs) or "the shards"
    client.set_tag(run_id, "mlflow.note.content", train_note(cfg, metrics, data, prior))
    for f in ("config.yaml", "history.csv", "learning_curve.png", "metrics.json", "info.json"):
        client.log_artifact(run_id, str(out_dir / f))
    if log_model is not None:  # the stage logs the weights as the run's model; run.json names what register registers
        run_info.update(log_model(out_dir / "model.pt", run_id))
    write_json_atomic(out_dir / "run.json", run_info)
    return {
        **run_info,
        "metrics": metrics,
        "history": history,
        "out_dir": str(out_dir),
        "fit_s": fit_s,
        "setup_s": setup_s,
    }


def write_tune_outputs(
    cfg: Config,
    out: Path,
    trials: list[dict],
    keys: list[str],
    client,
    parent_id: str,
    name: str,
    storage: str,
    max_concurrent: int,
    t0: float,
    fit_s: float,
    n_val: int | None = None,
) -> dict:
    """best.yaml (when a trial scored), trials.csv, summary.json, config.yaml; the best into the parent run.

    summary.json also says how far the best trial is ahead of the next and whether that exceeds the noise of a
    score over ``n_val`` validation images (:func:`dirl.train.search.margin_verdict`), and each trial's warm-up
    against its steps (``warmup_steps``, ``trial_steps``)."""
    from mlflow.entities import Metric, Param

    metric, mode = cfg.tune.metric, metric_mode(cfg.tune.metric)
    best = pick_best(trials, mode)
    verdict = margin_verdict(trials, metric, n_val)
    steps = [sum(int(r.get("steps") or 0) for r in t["history"]) for t in trials if t.get("history")]
    counts = {s: sum(t["status"] == s for t in trials) for s in ("ok", "stopped", "failed")}
    best_values = {}
    if best is not None:  # the values as the trial's validated config holds them (types coerced)
        best_values = current_values(trial_config(cfg, best["values"], cfg.tune.epochs), keys)
        write_best_yaml(
            out / "best.yaml",
            train_values(cfg, best_values),
            {
                "metric": metric,
                "mode": mode,
                "value": best["best"],
                "trial_id": best["trial_id"],
                "mlflow_run_id": best["run_id"],
                "parent_run_id": parent_id,
                "skipped": False,
                "searched": list(keys),
            },
        )
    write_trials_csv(out / "trials.csv", trials, keys, metric)
    save_resolved(cfg, out)
    summary = {
        "skipped": False,
        "metric": metric,
        "mode": mode,
        "best_value": best["best"] if best else None,
        "best_trial": best["trial_id"] if best else None,
        "trials": len(trials),
        "trials_ok": counts["ok"],
        "trials_stopped": counts["stopped"],
        "trials_failed": counts["failed"],
        "max_concurrent": max_concurrent,
        "seconds": round(time.perf_counter() - t0, 2),
        "fit_s": round(fit_s, 2),
        "margin": verdict["margin"],
        "noise": verdict["noise"],
        "beyond_noise": verdict["beyond_noise"],
        "runner_up": verdict["runner_up"],
        "n_val": n_val,
        "warmup_steps": trial_config(cfg, best["values"] if best else {}, cfg.tune.epochs).train.warmup_steps,
        "trial_steps": max(steps) if steps else None,
        "best": best_values,
        "parent_run_id": parent_id,
        "ray_run_name": name,
        "experiment_path": f"{storage.rstrip('/')}/{name}",
    }
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", {f"best_{metric}": summary["best_value"], "trials": len(trials)})

    ts = int(time.time() * 1000)
    for s, n in counts.items():  # counts are tags, not metrics drawn as bars
        client.set_tag(parent_id, f"trials_{s}", str(n))
    metrics = []
    if best is not None:
        metrics.append(Metric(metric_name(f"best_{metric}"), float(best["best"]), ts, 0))
        client.log_batch(
            parent_id, metrics=metrics, params=[Param(f"best.{k}", str(v)) for k, v in best_values.items()]
        )
        client.set_tag(parent_id, "best_trial", best["trial_id"])
        client.set_tag(parent_id, "best_run_id", best["run_id"])
        if best["run_id"]:
            client.set_tag(best["run_id"], "tune.best", "true")

        if verdict["margin"] is not None:
            client.set_tag(parent_id, "tune.margin", margin_line(summary))
        client.set_tag(
            parent_id,
            "mlflow.note.content",
            (
                f"Search of {len(trials)} trials of {cfg.model.name} at {cfg.model.input_size} px over {', '.join(keys)}: "
                f"best {metric} {best['best']:.2f} (trial {best['trial_id'].rsplit('_', 1)[-1]}, "
                + ", ".join(
                    f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in best_values.items()
                )
                + ")"
                + (f"; {margin_line(summary)}" if verdict["margin"] is not None else "")
                + "."
            ),
        )
    for t in trials:  # each trial's run: what it tried and how it ended
        if t["run_id"]:
            score = f"best {metric} {t['best']:.2f}" if t["best"] is not None else f"no {metric}"
            client.set_tag(
                t["run_id"],
                "mlflow.note.content",
                (
                    f"Tune trial {t['trial_id'].rsplit('_', 1)[-1]} ({t['status']}): "
                    + ", ".join(f"{k}={v}" for k, v in t["values"].items())
                    + f"; {score} after {t['epochs']} epoch(s)"
                    + (" - the best trial" if best is not None and t is best else "")
                    + "."
                ),
            )
    for f in ("best.yaml", "trials.csv", "summary.json", "config.yaml"):
        if (out / f).is_file():
            client.log_artifact(parent_id, str(out / f))
    public = [{k: v for k, v in t.items() if k not in ("history", "result")} for t in trials]
    return {**summary, "trials_detail": public, "out_dir": str(out)}


def write_tune_skipped(
    cfg: Config, out: Path, keys: Sequence[str], t0: float, reason: str = "tune.enabled is false"
) -> dict:
    """No search (``tune.enabled: false``, or every key set in params.yaml): best.yaml = the explicit values and
    defaults, nothing searched; a summary saying why."""
    values = train_values(cfg, {})
    write_best_yaml(out / "best.yaml", values, {"skipped": True, "reason": reason, "searched": []})
    write_trials_csv(out / "trials.csv", [], keys, cfg.tune.metric)
    save_resolved(cfg, out)
    summary = {
        "skipped": True,
        "reason": reason,
        "metric": cfg.tune.metric,
        "mode": metric_mode(cfg.tune.metric),
        "best_value": None,
        "best_trial": None,
        "trials": 0,
        "trials_ok": 0,
        "trials_stopped": 0,
        "trials_failed": 0,
        "seconds": round(time.perf_counter() - t0, 2),
        "best": values,
    }
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "metrics.json", {"trials": 0})
    return {**summary, "out_dir": str(out)}
