"""Evaluation: AP / F1 / IoU of a model next to the centred-prior baseline, figures, MLflow logging, comparison.

    metrics = evaluate_stage(cfg, model_ref="results/train/model.pt", out_dir="results/evaluate")
    table = compare(cfg, ["models:/dirl@champion", "models:/dirl@challenger", "unet.pt"], out_dir="results/compare")

Sets: ``test`` = the ``evaluate.split`` rows of ``data/synth`` and ``data/shards`` whose ``source`` is
``composite`` or ``synthesized`` (rows of raw photos are not composites and are left out), plus one set per
``evaluate.extra_sets`` folder in the iHarmony4 layout, named after the folder (e.g. ``ihd_dev``).
Every image is evaluated at the model's input size, one at a time as the reference does (per-image min-max
normalisation, AP, F1 and IoU at 0.5; see ``dirl.metrics``), and every figure stands beside the centred
Gaussian prior evaluated on the same masks.

Outputs of :func:`evaluate_stage` in ``out_dir``:
    scores.json      {"<set>": {"model": {n, AP, F1, IoU, subsets}, "centre_prior": {...}}, ...}
    metrics.json     {"<set>": {n, AP, F1, IoU}} of the model      } what `dvc metrics show` lists: one row each,
    prior.json       {"<set>": {n, AP, F1, IoU}} of the prior      } in the same columns
    pr_curve.csv     threshold, precision, recall of the model on the test set (pixel level, 101 thresholds)
    pr_prior.csv     the same for the centred prior on the same images (the PR plot's baseline)
    pr_curves.csv    set, method, threshold, precision, recall for every set, model and centre prior
    per_image.csv    set, id, subset, ap, f1, iou, prior_ap, prior_f1, prior_iou (fractions in [0, 1])
    grid.png         rows = test items; image | ground truth | model | centre prior
    mda.png          image | ground truth | A0..A4 | final (a note figure for models without attention maps)
    config.yaml      the resolved configuration
    info.json        the model reference, its header, the sets' sizes, notes and the MLflow run logged to
All of it is logged to the model's MLflow run: metrics ``<set>_AP``, ``<set>_F1``, ``<set>_IoU``,
``<set>_prior_*`` and the files under the artifact folder ``evaluate/``. The run is the one in ``run.json``
beside a weights file (``results/train/run.json``), the run itself for a run id, or the registered version's
source run for a ``models:/`` URI; a weights file without ``run.json`` is evaluated without logging.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from dirl.config import Config, save_resolved
from dirl.data.images import decode_image, decode_mask
from dirl.io import write_json_atomic, write_text_atomic
from dirl.data.transforms import eval_resize, normalize
from dirl.workspace import SHARD_DIRS
from dirl.metrics import MetricAccumulator, centre_prior

log = logging.getLogger(__name__)
EVAL_SOURCES = ("composite", "synthesized")
METHOD_PRIOR = "centre_prior"


class EvaluationError(RuntimeError):
    """Nothing to evaluate, or a set that cannot be read; the message says which and what to run."""


# ----------------------------------------------------------------------------- evaluation sets


@dataclass
class EvalSet:
    """A named list of (image, mask) items, loaded lazily by index."""

    name: str
    ids: list[str]
    subsets: list[str]
    load: Callable[[int], tuple[np.ndarray, np.ndarray]]  # i -> (RGB uint8 (h, w, 3), mask {0,1} (h, w))
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` resized to ``size`` x ``size`` (the eval transform before normalisation).

        One resize, from the stored image (the original for test composites, see ``dirl.data.preprocess``)
        straight to ``size``; the mask bilinear then cut at 0.5, as the reference. A mask that becomes empty
        at ``size`` is kept and scored as the reference scores it (``dirl.metrics``).
        """
        img, mask = self.load(i)
        return eval_resize(img, mask, size)

    def batches(self, size: int, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[dict]:
        """``{image (B,3,S,S) normalised, mask (B,1,S,S), id [B], subset [B]}`` in order."""
        order = list(range(len(self))) if indices is None else list(indices)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            pairs = [self.item(i, size) for i in idx]
            yield {
                "image": torch.from_numpy(np.stack([normalize(img) for img, _ in pairs])),  # (B, 3, S, S)
                "mask": torch.from_numpy(np.stack([m[None].astype(np.float32) for _, m in pairs])),  # (B, 1, S, S)
                "id": [self.ids[i] for i in idx],
                "subset": [self.subsets[i] for i in idx],
            }


def shard_set(dirs: Iterable[str | os.PathLike], split: str, name: str = "test") -> EvalSet:
    """The ``split`` rows of the shard folders whose source is a composite (real or synthesized), read as training
    reads them (:func:`dirl.data.loader.read_rows`)."""
    from dirl.data.loader import read_rows

    dirs = [Path(d) for d in dirs]
    notes = [f"{d}: no shards (manifest.json absent), skipped" for d in dirs if not (d / "manifest.json").is_file()]
    found = [d for d in dirs if (d / "manifest.json").is_file()]
    table, left_out = read_rows(found, split, EVAL_SOURCES, ("id", "subset", "image", "mask"))
    notes += [f"{d}: {n} {split} rows are not composites (source not in {EVAL_SOURCES}), left out"
              for d, n in left_out.items() if n]
    if not table.num_rows:
        raise EvaluationError(
            f"no {split!r} composites in {', '.join(map(str, dirs))}; build them first "
            "(`dvc repro synthesize`, or `dirl data preprocess` and `dirl data synthesize`)"
        )
    used = [str(d) for d in found]
    images, masks = table["image"], table["mask"]
    ids = table["id"].to_pylist()

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        img = decode_image(images[i].as_buffer(), f"{ids[i]}/image")
        mask, _ = decode_mask(masks[i].as_buffer(), f"{ids[i]}/mask")
        return img, mask

    notes.append(f"{name}: {len(ids)} rows from {', '.join(used)}")
    return EvalSet(name, ids, table["subset"].to_pylist(), load, notes)


def ihd_set(root: str | os.PathLike, name: str | None = None) -> EvalSet:
    """Every composite with a mask under an iHarmony4-layout folder (bad items are noted and left out)."""
    from dirl.data.ihd import scan
    from dirl.data.issues import IssueLog

    root = Path(root)
    issues = IssueLog("evaluate")
    try:
        items = scan(root, issues)
    except FileNotFoundError as e:
        raise EvaluationError(f"evaluate.extra_sets: {e}") from None
    notes = [f"{root}: {i['item']}: {i['reason']}" for i in issues.issues]
    if not items:
        raise EvaluationError(f"evaluate.extra_sets: {root} holds no usable composite with a mask")

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        mask, _ = decode_mask(items[i].mask)
        return decode_image(items[i].composite), mask

    return EvalSet(name or root.name, [it.id for it in items], [it.subset for it in items], load, notes)


def eval_sets(cfg: Config, shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS) -> tuple[list[EvalSet], list[str]]:
    """The configured test split and every extra set that exists; notes say what was skipped."""
    sets = [shard_set(shard_dirs, cfg.evaluate.split, cfg.evaluate.split)]  # named after the split ("test")
    notes: list[str] = []
    names = {sets[0].name}
    for root in cfg.evaluate.extra_sets:
        if not Path(root).is_dir():
            notes.append(f"evaluate.extra_sets: {root} does not exist, skipped")
            log.warning(notes[-1])
            continue
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(root).resolve().name)
        while name in names:
            name += "_"
        names.add(name)
        sets.append(ihd_set(root, name))
    return sets, notes


# ----------------------------------------------------------------------------- metrics


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate_model(model: torch.nn.Module, batches: Iterable[dict], device: torch.device | str | None = None,
                   baseline: MetricAccumulator | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Metrics of ``model`` over ``batches`` of ``{image, mask, id}`` at the batches' size.

    Returns ``(metrics, per_image, pr_curve)`` as ``MetricAccumulator.compute / per_image / pr_curve``.
    With ``baseline`` given, the centred prior is accumulated into it on the same masks.
    """
    device = torch.device(device) if device is not None else _device(model)
    model.to(device).eval()
    acc = MetricAccumulator()
    for batch in batches:
        x, gt = batch["image"].to(device), batch["mask"]
        pred = model(x)[0].float().cpu()  # (B, 1, S, S) final map
        acc.update(pred, gt, batch["id"])
        if baseline is not None:
            b, _, h, w = gt.shape
            baseline.update(torch.from_numpy(centre_prior(h, w)).expand(b, 1, h, w), gt, batch["id"])
    return acc.compute(), acc.per_image(), acc.pr_curve()


def _summary(rows: Sequence[dict], prefix: str = "") -> dict:
    ap = np.array([r[f"{prefix}ap"] for r in rows])
    f1 = np.array([r[f"{prefix}f1"] for r in rows])
    iou = np.array([r[f"{prefix}iou"] for r in rows])
    return {"n": len(rows), "AP": float(ap.mean() * 100), "F1": float(f1.mean()), "IoU": float(iou.mean() * 100)}


def _by_subset(rows: Sequence[dict], prefix: str = "") -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["subset"]].append(r)
    return {name: _summary(g, prefix) for name, g in sorted(groups.items())}


def evaluate_set(model: torch.nn.Module, evalset: EvalSet, size: int, batch_size: int,
                 device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Model and centred prior on one set: ``{"model", "centre_prior", "per_image", "pr_model", "pr_prior"}``.

    Subsets are the set's own sub-dataset names (the shards' ``subset`` column, the iHarmony4 folder).
    """
    from dirl.progress import bar as progress_bar

    prior = MetricAccumulator()
    subsets = dict(zip(evalset.ids, evalset.subsets))
    batches = progress_bar(evalset.batches(size, batch_size), total=-(-len(evalset) // batch_size),
                           desc=f"evaluate {evalset.name}", unit="batch", disable=not progress)
    _, per_image, pr_model = evaluate_model(model, batches, device, baseline=prior)
    rows = [
        {"set": evalset.name, "id": m["id"], "subset": subsets[m["id"]], "ap": m["ap"], "f1": m["f1"], "iou": m["iou"],
         "prior_ap": p["ap"], "prior_f1": p["f1"], "prior_iou": p["iou"]}
        for m, p in zip(per_image, prior.per_image())
    ]
    model_m = {**_summary(rows), "subsets": _by_subset(rows)}
    prior_m = {**_summary(rows, "prior_"), "subsets": _by_subset(rows, "prior_")}
    return {"model": model_m, METHOD_PRIOR: prior_m, "per_image": rows, "pr_model": pr_model,
            "pr_prior": prior.pr_curve()}


# ----------------------------------------------------------------------------- outputs


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())


def pick_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (deterministic)."""
    if n <= 0 or k <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


@torch.inference_mode()
def _outputs(model: torch.nn.Module, evalset: EvalSet, idx: Sequence[int], size: int) -> list[list[np.ndarray]]:
    """All output maps of ``model`` for items ``idx``: per item a list of (S, S) arrays."""
    device = _device(model)
    res: list[list[np.ndarray]] = []
    for batch in evalset.batches(size, 8, idx):
        outs = [o.float().cpu().numpy()[:, 0] for o in model(batch["image"].to(device))]  # each (B, S, S)
        res.extend([list(maps) for maps in zip(*outs)])
    return res


def _resize_map(m: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return m if m.shape == (size, size) else cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)


def _figures(model: torch.nn.Module, info: dict, evalset: EvalSet, size: int, k: int, out: Path) -> list[str]:
    """grid.png and mda.png of the test set; returns notes."""
    from dirl.lifecycle import figures

    idx = figures.pick_distinct(evalset.ids, evalset.subsets, k, seed=0)
    items = [evalset.item(i, size) for i in idx]
    images, masks = [im for im, _ in items], [m for _, m in items]
    ids = [evalset.ids[i] for i in idx]
    outs = _outputs(model, evalset, idx, size)
    label = info.get("label") or info.get("model", "model")
    prior = centre_prior(size, size)
    figures.grid_figure(images, masks, {label: [o[0] for o in outs], "centre prior": [prior] * len(idx)}, ids,
                          out / "grid.png", title=f"{evalset.name}: {label} at {size}x{size}")
    notes = []
    if outs and len(outs[0]) >= 6:
        n = min(3, len(idx))
        figures.mda_figure(images[:n], masks[:n], outs[:n], ids[:n], out / "mda.png")
    else:
        note = (f"model {info.get('model')!r} has no attention maps (it returns {len(outs[0]) if outs else 0} map); "
                "mda.png shows only this note")
        figures.note_figure(note, out / "mda.png")
        notes.append(note)
    return notes


# ----------------------------------------------------------------------------- MLflow


def _run_for(model_ref: str, info: dict, cfg: Config) -> tuple[str | None, str | None]:
    """(run id, tracking URI) of the run a model belongs to; (None, None) when unknown."""
    from dirl.tracking import tracking_uri

    if info.get("run_id"):
        return info["run_id"], tracking_uri(cfg)
    path = Path(model_ref)
    run_json = (path if path.is_dir() else path.parent) / "run.json"
    if path.exists() and run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except ValueError as e:
            raise EvaluationError(f"{run_json}: not valid JSON ({e}); re-run training") from None
        if run.get("run_id"):
            return run["run_id"], run.get("tracking_uri") or tracking_uri(cfg)
    return None, None


def metric_key(name: str) -> str:
    """A set or metric name that MLflow accepts as a metric key."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]+", "_", name)


def write_scores(out: Path, scores: dict) -> None:
    """``scores.json`` (everything: model and centred prior per set, with subsets), and the two small files that
    ``dvc metrics show`` reads: ``metrics.json`` (the model) and ``prior.json`` (the centred prior on the same
    images), with the same keys so that they share columns and the prior's row stands under the model's."""
    write_json_atomic(out / "scores.json", scores)
    for method, name in (("model", "metrics.json"), (METHOD_PRIOR, "prior.json")):
        write_json_atomic(out / name, {s: {k: res[method][k] for k in ("n", "AP", "F1", "IoU") if k in res[method]}
                                       for s, res in scores.items() if method in res})


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``{"test": {"model": {"AP": ..}, "centre_prior": {...}}}`` -> ``{"test_AP": .., "test_prior_AP": ..}``."""
    flat = {}
    for set_name, res in metrics.items():
        for method, prefix in (("model", ""), (METHOD_PRIOR, "prior_")):
            for key in ("AP", "F1", "IoU", "n"):
                if key in res.get(method, {}):
                    flat[metric_key(f"{set_name}_{prefix}{key}")] = float(res[method][key])
    return flat


def log_to_run(run_id: str, uri: str, metrics: dict, out: Path, artifact_path: str = "evaluate",
               shard_dirs: Sequence[str | os.PathLike] = (), split: str = "test") -> None:
    """Log flat metrics and the files of ``out`` to an existing MLflow run; the ``split`` rows of ``shard_dirs`` as
    its evaluation dataset; and the metrics against the run's logged model too (its page in the UI shows them)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    from dirl.tracking import TrackingError, check_reachable

    check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    try:
        exp_id = client.get_run(run_id).info.experiment_id
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"run {run_id} not found in {uri}; was the model trained against another store?") from None
    from dirl.tracking import log_datasets

    now = int(time.time() * 1000)
    try:
        models = client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'", max_results=1,
                                             order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    except mlflow.exceptions.MlflowException:
        models = []
    model_id = models[0].model_id if models else None
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=model_id)
                                      for k, v in flat_metrics(metrics).items()])
    log_datasets(client, run_id, [d for d in shard_dirs if Path(d).is_dir()], {split: "evaluation"})
    client.log_artifacts(run_id, str(out), artifact_path)


# ----------------------------------------------------------------------------- stages


def evaluate_stage(cfg: Config, model_ref: str = "results/train/model.pt",
                   out_dir: str | os.PathLike = "results/evaluate",
                   shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS, log_mlflow: bool = True) -> dict:
    """Evaluate one model on the test split and the extra sets; write and log everything (module docstring)."""
    from dirl.speed import default_device
    from dirl.lifecycle.resolve import load_model_ref

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets, notes = eval_sets(cfg, shard_dirs)
    model, info = load_model_ref(model_ref, cfg)
    model.to(default_device()).eval()
    size = int(info.get("input_size") or cfg.model.input_size)
    metrics: dict[str, Any] = {}
    per_image, pr_rows = [], []
    for s in sets:
        res = evaluate_set(model, s, size, cfg.evaluate.batch_size)
        metrics[s.name] = {"model": res["model"], METHOD_PRIOR: res[METHOD_PRIOR]}
        per_image += res["per_image"]
        pr_rows += [{"set": s.name, "method": "model", **r} for r in res["pr_model"]]
        pr_rows += [{"set": s.name, "method": METHOD_PRIOR, **r} for r in res["pr_prior"]]
        notes += s.notes
        log.info("%s: model AP %.2f F1 %.4f IoU %.2f | centre prior AP %.2f F1 %.4f IoU %.2f", s.name,
                 res["model"]["AP"], res["model"]["F1"], res["model"]["IoU"], res[METHOD_PRIOR]["AP"],
                 res[METHOD_PRIOR]["F1"], res[METHOD_PRIOR]["IoU"])
    write_scores(out, metrics)
    test = sets[0].name
    for method, name in (("model", "pr_curve.csv"), (METHOD_PRIOR, "pr_prior.csv")):  # DVC's PR plot: two lines
        _write_csv(out / name, [r for r in pr_rows if r["set"] == test and r["method"] == method],
                   ["threshold", "precision", "recall"])
    _write_csv(out / "pr_curves.csv", pr_rows, ["set", "method", "threshold", "precision", "recall"])
    _write_csv(out / "per_image.csv", per_image,
               ["set", "id", "subset", "ap", "f1", "iou", "prior_ap", "prior_f1", "prior_iou"])
    notes += _figures(model, info, sets[0], size, cfg.evaluate.grid_items, out)
    save_resolved(cfg, out)
    run_id, uri = _run_for(model_ref, info, cfg) if log_mlflow else (None, None)
    header = {k: v for k, v in info.items() if k not in ("metrics",)}
    write_json_atomic(out / "info.json", {"model": header, "input_size": size, "sets": {s.name: len(s) for s in sets},
                                          "notes": notes, "mlflow": {"run_id": run_id, "tracking_uri": uri}})
    if run_id:
        log_to_run(run_id, uri, metrics, out, shard_dirs=shard_dirs, split=cfg.evaluate.split)
    else:
        log.warning("no MLflow run for %s (no run.json beside it): results written to %s only", model_ref, out)
    return metrics


def _markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table; AP and IoU with 2 decimals, F1 with 4 (the paper's style)."""
    def fmt(col: str, v) -> str:
        return f"{v:.4f}" if col == "F1" else (f"{v:.2f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare(cfg: Config, model_refs: Sequence[str], out_dir: str | os.PathLike = "results/compare",
            shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS) -> dict:
    """Evaluate several models (weights paths, run ids, ``models:/`` URIs) on the same sets.

    Writes ``comparison.md`` and ``comparison.csv`` (set, method, input_size, n, AP, F1, IoU; the centred prior
    as a row of every set, at ``model.input_size``), ``grid.png`` (test items: image | ground truth | each
    model | centre prior) and ``config.yaml``. Returns ``{"rows": [...], "markdown": str}``.
    """
    from dirl.lifecycle import figures
    from dirl.speed import default_device
    from dirl.lifecycle.resolve import load_model_ref

    if not model_refs:
        raise EvaluationError("compare needs at least one model reference")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets, _ = eval_sets(cfg, shard_dirs)
    test = sets[0]
    show = max(cfg.model.input_size, 16)
    idx = figures.pick_distinct(test.ids, test.subsets, cfg.evaluate.grid_items, seed=cfg.data.seed)
    rows: list[dict] = []
    grid_maps: dict[str, list[np.ndarray]] = {}
    for ref in model_refs:
        model, info = load_model_ref(ref, cfg)
        model.to(default_device()).eval()
        size = int(info.get("input_size") or cfg.model.input_size)
        label = info.get("label") or ref
        while label in grid_maps:
            label += "'"
        for s in sets:
            res = evaluate_set(model, s, size, cfg.evaluate.batch_size)
            rows.append({"set": s.name, "method": label, "ref": ref, "input_size": size,
                         **{k: res["model"][k] for k in ("n", "AP", "F1", "IoU")}})
        grid_maps[label] = [_resize_map(o[0], show) for o in _outputs(model, test, idx, size)]
        del model
    size = cfg.model.input_size
    for s in sets:  # the centred prior on the same masks, at model.input_size
        prior = MetricAccumulator()
        for batch in s.batches(size, cfg.evaluate.batch_size):
            b, _, h, w = batch["mask"].shape
            prior.update(torch.from_numpy(centre_prior(h, w)).expand(b, 1, h, w), batch["mask"], batch["id"])
        m = prior.compute()
        rows.append({"set": s.name, "method": "centre prior", "ref": "", "input_size": size,
                     **{k: m[k] for k in ("n", "AP", "F1", "IoU")}})
    rows.sort(key=lambda r: ([s.name for s in sets].index(r["set"]), r["method"] == "centre prior"))
    columns = ["set", "method", "input_size", "n", "AP", "F1", "IoU"]
    md = ("AP and IoU x 100, F1 in [0, 1]; each model at its own input size, per image as the reference.\n\n"
          + _markdown(rows, columns))
    write_text_atomic(out / "comparison.md", md)
    _write_csv(out / "comparison.csv", rows, columns + ["ref"])
    items = [test.item(i, show) for i in idx]
    grid_maps["centre prior"] = [centre_prior(show, show)] * len(idx)
    figures.grid_figure([im for im, _ in items], [m for _, m in items], grid_maps, [test.ids[i] for i in idx],
                          out / "grid.png", title=f"{test.name}: shown at {show}x{show}")
    save_resolved(cfg, out)
    return {"rows": rows, "markdown": md}
