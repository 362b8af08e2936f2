"""Evaluation: AP / F1 / IoU of a model next to the centred-prior baseline, figures, MLflow logging, comparison.

    sets, notes = eval_sets(cfg)                        # the test split and the extra sets
    metrics, per_image, pr_rows = score_sets(model, sets, size, batch_size)
    table = compare(cfg, ["models:/dirl@champion", "models:/dirl@challenger", "unet.pt"], out_dir="results/compare")

Sets: ``test`` = the ``evaluate.split`` rows of ``data/synth`` and ``data/shards`` whose ``source`` is
``composite`` or ``synthesized`` (rows of raw photos are not composites and are left out), plus one set per
``evaluate.extra_sets`` folder in the iHarmony4 layout, named after the folder (e.g. ``ihd_dev``).
Every image is evaluated at the model's input size, one at a time as the reference does (per-image min-max
normalisation, AP, F1 and IoU at 0.5; see ``dirl.metrics``), and every figure stands beside the centred
Gaussian prior evaluated on the same masks.

The evaluate stage (:mod:`dirl.stages.evaluate`) runs these steps in order and lists the files it writes.
Every evaluation is an MLflow run of its own (:func:`log_evaluation`), in the experiment of the model's training
run and tagged with it and with the logged model: metrics ``<set>/IoU``, ``<set>/AP``, ``<set>/F1``,
``<set>/prior_*`` (each linked to its set's dataset; the sets' sizes are params) and the files under the artifact folder ``evaluate/``. The
training run, once written by training, is never written again. The model's training run is the one in
``run.json`` beside a weights file (``results/train/run.json``), the run itself for a run id, or the registered
version's source run for a ``models:/`` URI; a weights file without ``run.json`` is evaluated without logging.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dirl import workspace
from dirl.config import Config, save_resolved
from dirl.data.ihd import scan
from dirl.data.images import decode_image, decode_mask
from dirl.data.issues import IssueLog
from dirl.data.loader import read_rows
from dirl.data.show import photo_of
from dirl.data.transforms import eval_resize, normalize
from dirl.io import write_json_atomic, write_text_atomic
from dirl.lifecycle import figures
from dirl.lifecycle.resolve import load_model_ref
from dirl.metrics import MetricAccumulator, centre_prior
from dirl.progress import bar as progress_bar
from dirl.speed import default_device
from dirl.tracking import TrackingError, check_reachable, flatten, record_failure, source_tags, tracking_uri
from dirl.workspace import SHARD_DIRS

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
    source: str = ""  # where the items were read from (shard folders and split, or an iHarmony4 folder)
    interpolation: str = "auto"  # evaluate.interpolation: the resize to the input size (auto | bilinear)

    def __len__(self) -> int:
        return len(self.ids)

    def item(self, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i`` resized to ``size`` x ``size`` (the eval transform before normalisation).

        One resize, from the stored image (the original for test composites, see ``dirl.data.preprocess``)
        straight to ``size``; the mask bilinear then cut at 0.5, as the reference. A mask that becomes empty
        at ``size`` is kept and scored as the reference scores it (``dirl.metrics``).
        """
        img, mask = self.load(i)
        return eval_resize(img, mask, size, self.interpolation)

    def batches(self, size: int, batch_size: int, indices: Sequence[int] | None = None) -> Iterator[dict]:
        """``{image (B,3,S,S) normalised, mask (B,1,S,S), id [B], subset [B]}`` in order."""
        order = list(range(len(self))) if indices is None else list(indices)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
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

    paths = [Path(d) for d in dirs]
    notes = [f"{d}: no shards (manifest.json absent), skipped" for d in paths if not (d / "manifest.json").is_file()]
    found = [d for d in paths if (d / "manifest.json").is_file()]
    table, left_out = read_rows(found, split, EVAL_SOURCES, ("id", "subset", "image", "mask"))
    notes += [
        f"{d}: {n} {split} rows are not composites (source not in {EVAL_SOURCES}), left out"
        for d, n in left_out.items()
        if n
    ]
    if not table.num_rows:
        raise EvaluationError(
            f"no {split!r} composites in {', '.join(map(str, paths))}; build them first "
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
    return EvalSet(name, ids, table["subset"].to_pylist(), load, notes, f"{','.join(used)}:{split}")


def ihd_set(root: str | os.PathLike, name: str | None = None) -> EvalSet:
    """Every composite with a mask under an iHarmony4-layout folder (bad items are noted and left out)."""
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

    return EvalSet(
        name or root.name, [it.id for it in items], [it.subset for it in items], load, notes, str(root.resolve())
    )


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
    for s in sets:
        s.interpolation = cfg.evaluate.interpolation
    return sets, notes


# ----------------------------------------------------------------------------- metrics


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[dict],
    device: torch.device | str | None = None,
    baseline: MetricAccumulator | None = None,
) -> tuple[dict, list[dict], list[dict]]:
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


def evaluate_set(
    model: torch.nn.Module,
    evalset: EvalSet,
    size: int,
    batch_size: int,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict:
    """Model and centred prior on one set: ``{"model", "centre_prior", "per_image", "pr_model", "pr_prior"}``.

    Subsets are the set's own sub-dataset names (the shards' ``subset`` column, the iHarmony4 folder).
    """

    prior = MetricAccumulator()
    subsets = dict(zip(evalset.ids, evalset.subsets))
    batches = progress_bar(
        evalset.batches(size, batch_size),
        total=-(-len(evalset) // batch_size),
        desc=f"evaluate {evalset.name}",
        unit="batch",
        disable=not progress,
    )
    _, per_image, pr_model = evaluate_model(model, batches, device, baseline=prior)
    rows = [
        {
            "set": evalset.name,
            "id": m["id"],
            "subset": subsets[m["id"]],
            "ap": m["ap"],
            "f1": m["f1"],
            "iou": m["iou"],
            "prior_ap": p["ap"],
            "prior_f1": p["f1"],
            "prior_iou": p["iou"],
        }
        for m, p in zip(per_image, prior.per_image())
    ]
    model_m = {**_summary(rows), "subsets": _by_subset(rows)}
    prior_m = {**_summary(rows, "prior_"), "subsets": _by_subset(rows, "prior_")}
    return {
        "model": model_m,
        METHOD_PRIOR: prior_m,
        "per_image": rows,
        "pr_model": pr_model,
        "pr_prior": prior.pr_curve(),
    }


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


def write_figures(
    model: torch.nn.Module,
    info: dict,
    evalset: EvalSet,
    size: int,
    k: int,
    out: Path,
    per_image: Sequence[dict] | None = None,
    scores: dict | None = None,
) -> list[str]:
    """grid.png and mda.png of the test set; returns notes.

    With ``per_image`` (the set's rows of per_image.csv) the grid shows the items at ``k`` quantiles of the
    per-image model IoU, best first (:func:`dirl.lifecycle.figures.quantile_pick`), else ``k`` distinct photos;
    ``scores`` (``{"model", "centre_prior"}`` of the set) are written on it."""

    label = info.get("label") or info.get("model", "model")
    iou = {r["id"]: r["iou"] for r in per_image or ()}
    if iou and all(i in iou for i in evalset.ids):
        picks = figures.quantile_pick([iou[i] for i in evalset.ids], k, [photo_of(i) for i in evalset.ids])
        idx, row_labels = [i for i, _ in picks], [name for _, name in picks]
        how = f"rows: the images at {len(idx)} quantiles of per-image model IoU ({', '.join(row_labels)})"
    else:
        idx, row_labels = figures.pick_distinct(evalset.ids, evalset.subsets, k, seed=0), None
        how = f"rows: {len(idx)} images of distinct photos"
    items = [evalset.item(i, size) for i in idx]
    images, masks = [im for im, _ in items], [m for _, m in items]
    ids = [evalset.ids[i] for i in idx]
    outs = _outputs(model, evalset, idx, size)
    prior = centre_prior(size, size)
    headline = ""
    if scores:
        headline = figures.headline_text(scores["model"], scores.get(METHOD_PRIOR), f"all of {evalset.name}, {label}")
    figures.grid_figure(
        images,
        masks,
        {label: [o[0] for o in outs], "centre prior": [prior] * len(idx)},
        ids,
        out / "grid.png",
        title=f"{evalset.name}: {label} at {size}x{size}\n{how}",
        row_labels=row_labels,
        headline=headline,
    )
    notes = []
    if outs and len(outs[0]) >= 6:
        pick = sorted({0, len(idx) // 2, len(idx) - 1})  # best, median, worst of the grid's rows
        figures.mda_figure(
            [images[i] for i in pick],
            [masks[i] for i in pick],
            [outs[i] for i in pick],
            [ids[i] + (f" ({row_labels[i]})" if row_labels else "") for i in pick],
            out / "mda.png",
        )
    else:
        note = (
            f"model {info.get('model')!r} has no attention maps (it returns {len(outs[0]) if outs else 0} map); "
            "mda.png shows only this note"
        )
        figures.note_figure(note, out / "mda.png")
        notes.append(note)
    return notes


def write_pr_picture(out: Path, rows: Sequence[dict], scores: dict, info: dict, set_name: str) -> Path:
    """pr_curve.png: the PR curves of pr_curve.csv and pr_prior.csv as a picture (MLflow, the logged model)."""
    label = info.get("label") or info.get("model", "model")
    return figures.pr_figure(
        [r for r in rows if r["method"] == "model"],
        [r for r in rows if r["method"] == METHOD_PRIOR],
        out / "pr_curve.png",
        title=f"{set_name}: pixel-level precision-recall ({scores['model']['n']} images)",
        model_label=label,
        model_ap=scores["model"]["AP"],
        prior_ap=scores[METHOD_PRIOR]["AP"],
    )


# ----------------------------------------------------------------------------- MLflow


def train_run_of(model_ref: str, info: dict, cfg: Config) -> tuple[str | None, str | None, str | None]:
    """(train run id, tracking URI, logged model id) of the model; (None, None, None) when unknown.

    The model id comes from ``run.json`` beside a weights file, the registered version (``models:/``), or the
    newest model the run logged (a run id); it may be None when the run logged no model."""

    if info.get("run_id"):
        return info["run_id"], tracking_uri(cfg), info.get("model_id")
    path = Path(model_ref)
    run_json = (path if path.is_dir() else path.parent) / "run.json"
    if path.exists() and run_json.is_file():
        try:
            run = json.loads(run_json.read_text())
        except ValueError as e:
            raise EvaluationError(f"{run_json}: not valid JSON ({e}); re-run training") from None
        if run.get("run_id"):
            return run["run_id"], run.get("tracking_uri") or tracking_uri(cfg), run.get("model_id")
    return None, None, None


def metric_key(name: str) -> str:
    """A set or metric name that MLflow accepts as a metric key."""
    return re.sub(r"[^A-Za-z0-9_.\-/ ]+", "_", name)


def write_scores(out: Path, scores: dict) -> None:
    """``scores.json`` (everything: model and centred prior per set, with subsets), and the two small files that
    ``dvc metrics show`` reads: ``metrics.json`` (the model) and ``prior.json`` (the centred prior on the same
    images), with the same keys so that they share columns and the prior's row stands under the model's."""
    write_json_atomic(out / "scores.json", scores)
    for method, name in (("model", "metrics.json"), (METHOD_PRIOR, "prior.json")):
        write_json_atomic(
            out / name,
            {
                s: {k: res[method][k] for k in ("n", "AP", "F1", "IoU") if k in res[method]}
                for s, res in scores.items()
                if method in res
            },
        )


def flat_metrics(metrics: dict, counts: bool = False) -> dict[str, float]:
    """``{"test": {"model": {"AP": ..}, "centre_prior": {...}}}`` -> ``{"test/AP": .., "test/prior_AP": ..}``: one
    section per set in the MLflow UI. ``counts``: the sets' sizes too (``test/n``; a count is a param or a tag in
    MLflow, not a metric)."""
    flat = {}
    for set_name, res in metrics.items():
        for method, prefix in (("model", ""), (METHOD_PRIOR, "prior_")):
            for key in ("IoU", "AP", "F1") + (("n",) if counts and method == "model" else ()):
                if key in res.get(method, {}):
                    flat[f"{metric_key(set_name).replace('/', '_')}/{prefix}{key}"] = float(res[method][key])
    return flat


def set_dataset(evalset: EvalSet):
    """The MLflow dataset entity of an evaluation set: its name, a digest of its items and sources, where it was
    read from and its size (what the UI shows beside the metrics computed on it)."""
    import hashlib

    from mlflow.entities import Dataset

    digest = hashlib.sha256(json.dumps({"ids": evalset.ids, "source": evalset.source}).encode()).hexdigest()[:16]
    return Dataset(
        name=evalset.name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": evalset.source or evalset.name}),
        profile=json.dumps({"num_rows": len(evalset), "subsets": sorted(set(evalset.subsets))}),
    )


def _logged_model_id(client, exp_id: str, run_id: str, model_id: str | None) -> str | None:
    """``model_id`` when the store knows it, else the newest model that ``run_id`` logged; None without one."""
    import mlflow

    if model_id:
        try:
            return client.get_logged_model(model_id).model_id
        except mlflow.exceptions.MlflowException:
            pass
    try:
        models = client.search_logged_models(
            [exp_id],
            filter_string=f"source_run_id = '{run_id}'",
            max_results=1,
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        )
    except mlflow.exceptions.MlflowException:
        return None
    return models[0].model_id if models else None


FIGURES = ("grid.png", "mda.png", "pr_curve.png")  # what the pipeline's evaluation adds to the logged model


def log_evaluation(
    run_id: str,
    uri: str,
    metrics: dict,
    out: Path,
    sets: Sequence[EvalSet],
    cfg: Config,
    model_id: str | None = None,
    model_ref: str = "",
    pipeline: bool = False,
    before_files: Callable[[str], None] | None = None,
) -> str:
    """Record one evaluation as its own MLflow run (returned) beside the model's training run ``run_id``, which it
    leaves untouched: the run is tagged with the train run and the logged model (``dirl.train_run_id``,
    ``dirl.model_id``, and the model as the run's input), holds the metrics (each linked to the set's dataset),
    the evaluation's parameters and the files of ``out`` under ``evaluate/``.

    ``pipeline``: the pipeline's own evaluation of the model (the DVC ``evaluate`` stage, writing
    ``results/evaluate``): its metrics are also logged against the logged model (the model's page shows them with
    their dataset), and the first one adds its figures to the model (``evaluation/``). Any other evaluation
    (another ``--out``, other sets) is a record of its own and changes neither the train run nor the model.
    ``before_files(run id)`` runs before the files of ``out`` are logged (``info.json`` names the run)."""
    import time

    import mlflow
    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param

    check_reachable(uri)
    client = mlflow.MlflowClient(uri)
    try:
        train_run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"run {run_id} not found in {uri}; was the model trained against another store?") from None
    exp_id = train_run.info.experiment_id
    model_id = _logged_model_id(client, exp_id, run_id, model_id)
    kind = "pipeline" if pipeline else "ad hoc"
    train_name = train_run.info.run_name or run_id[:8]
    test = next(iter(metrics))
    m, p = metrics[test]["model"], metrics[test][METHOD_PRIOR]
    note = (
        f"Evaluation ({kind}) of {train_name} on {', '.join(f'{s.name} ({len(s)} images)' for s in sets)}: "
        f"{test} IoU {m['IoU']:.2f} against {p['IoU']:.2f} for the centred prior "
        f"({'beats' if m['IoU'] > p['IoU'] else 'does not beat'} it), AP {m['AP']:.2f} against {p['AP']:.2f}."
    )
    tags = {
        **source_tags(),
        "stage": "evaluate",
        "dirl.evaluation": kind,
        "dirl.train_run_id": run_id,
        "dirl.model_ref": model_ref[:500],
        "dirl.out_dir": str(out.resolve())[:500],
        "mlflow.note.content": note,
    }
    if model_id:
        tags["dirl.model_id"] = model_id
    run = client.create_run(
        exp_id, run_name=f"evaluate{' (ad hoc)' if not pipeline else ''} {train_name}"[:250], tags=tags
    )
    eval_id = run.info.run_id
    try:
        params = {
            "evaluate": dataclasses.asdict(cfg.evaluate),
            "model_ref": model_ref,
            "sets": {s.name: len(s) for s in sets},
        }
        client.log_batch(eval_id, params=[Param(k, v) for k, v in flatten(params).items()][:100])
        datasets = {s.name: set_dataset(s) for s in sets}
        client.log_inputs(
            eval_id,
            datasets=[DatasetInput(d, tags=[InputTag("mlflow.data.context", "evaluation")]) for d in datasets.values()],
            models=[LoggedModelInput(model_id)] if model_id else None,
        )
        now = int(time.time() * 1000)
        batch = []
        for set_name in metrics:
            ds = datasets.get(set_name)
            for key, value in flat_metrics({set_name: metrics[set_name]}).items():
                batch.append(
                    Metric(
                        key,
                        value,
                        now,
                        0,
                        model_id=model_id if pipeline else None,
                        dataset_name=ds.name if ds else None,
                        dataset_digest=ds.digest if ds else None,
                    )
                )
        client.log_batch(eval_id, metrics=batch)
        if before_files is not None:
            before_files(eval_id)
        client.log_artifacts(eval_id, str(out), "evaluate")
        if pipeline and model_id and not client.list_logged_model_artifacts(model_id, "evaluation"):
            import shutil
            import tempfile

            with tempfile.TemporaryDirectory(prefix="dirl-figures-") as tmp:
                for f in FIGURES:
                    if (out / f).is_file():
                        shutil.copyfile(out / f, Path(tmp) / f)
                client.log_model_artifacts(model_id, tmp, "evaluation")
            client.set_logged_model_tags(model_id, {"dirl.evaluation_run_id": eval_id})
    except BaseException as e:
        record_failure(client, eval_id, e)
        raise
    client.set_terminated(eval_id, status="FINISHED")
    return eval_id


# ----------------------------------------------------------------------------- the evaluate stage's steps


def score_sets(
    model: torch.nn.Module, sets: Sequence[EvalSet], size: int, batch_size: int
) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """Model and centred prior on every set (:func:`evaluate_set`), each set's figures logged in one line.

    Returns ``(metrics, per_image, pr_rows)``: ``{"<set>": {"model", "centre_prior"}}`` (what scores.json holds),
    the rows of per_image.csv, and the rows of pr_curves.csv (``set``, ``method``, threshold, precision, recall)."""
    metrics: dict[str, Any] = {}
    per_image, pr_rows = [], []
    for s in sets:
        res = evaluate_set(model, s, size, batch_size)
        metrics[s.name] = {"model": res["model"], METHOD_PRIOR: res[METHOD_PRIOR]}
        per_image += res["per_image"]
        pr_rows += [{"set": s.name, "method": "model", **r} for r in res["pr_model"]]
        pr_rows += [{"set": s.name, "method": METHOD_PRIOR, **r} for r in res["pr_prior"]]
        log.info(
            "%s: model AP %.2f F1 %.4f IoU %.2f | centre prior AP %.2f F1 %.4f IoU %.2f",
            s.name,
            res["model"]["AP"],
            res["model"]["F1"],
            res["model"]["IoU"],
            res[METHOD_PRIOR]["AP"],
            res[METHOD_PRIOR]["F1"],
            res[METHOD_PRIOR]["IoU"],
        )
    return metrics, per_image, pr_rows


def write_pr_curves(out: Path, pr_rows: Sequence[dict], test: str) -> None:
    """pr_curve.csv and pr_prior.csv (the model and the centred prior on the ``test`` set: DVC's PR plot, two
    lines) and pr_curves.csv (every set and method)."""
    for method, name in (("model", "pr_curve.csv"), (METHOD_PRIOR, "pr_prior.csv")):  # DVC's PR plot: two lines
        _write_csv(
            out / name,
            [r for r in pr_rows if r["set"] == test and r["method"] == method],
            ["threshold", "precision", "recall"],
        )
    _write_csv(out / "pr_curves.csv", pr_rows, ["set", "method", "threshold", "precision", "recall"])


def write_per_image(out: Path, per_image: Sequence[dict]) -> None:
    """per_image.csv: set, id, subset, ap, f1, iou and the centred prior's, per image."""
    _write_csv(
        out / "per_image.csv",
        per_image,
        ["set", "id", "subset", "ap", "f1", "iou", "prior_ap", "prior_f1", "prior_iou"],
    )


def is_pipeline_output(out: Path) -> bool:
    """Whether ``out`` is the DVC stage's output folder (the workspace's ``results/evaluate``): an evaluation
    written there is the pipeline's own evaluation of the model."""
    return out.resolve() == (workspace.root() / workspace.results("evaluate")).resolve()


def evaluation_record(
    info: dict,
    size: int,
    sets: Sequence[EvalSet],
    notes: list[str],
    run_id: str | None,
    model_id: str | None,
    uri: str | None,
    pipeline: bool,
) -> dict[str, Any]:
    """What info.json holds: the model's header, the input size, the sets' sizes, the notes and the MLflow runs
    (``mlflow.evaluation_run_id`` None until the evaluation run exists)."""
    header = {k: v for k, v in info.items() if k not in ("metrics",)}
    return {
        "model": header,
        "input_size": size,
        "sets": {s.name: len(s) for s in sets},
        "notes": notes,
        "mlflow": {
            "train_run_id": run_id,
            "model_id": model_id,
            "evaluation_run_id": None,
            "tracking_uri": uri,
            "pipeline": bool(pipeline),
        },
    }


def _markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table; AP and IoU with 2 decimals, F1 with 4 (the paper's style)."""

    def fmt(col: str, v) -> str:
        return f"{v:.4f}" if col == "F1" else (f"{v:.2f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare(
    cfg: Config,
    model_refs: Sequence[str],
    out_dir: str | os.PathLike = "results/compare",
    shard_dirs: Sequence[str | os.PathLike] = SHARD_DIRS,
) -> dict:
    """Evaluate several models (weights paths, run ids, ``models:/`` URIs) on the same sets.

    Writes ``comparison.md`` and ``comparison.csv`` (set, method, input_size, n, AP, F1, IoU; the centred prior
    as a row of every set, at ``model.input_size``), ``grid.png`` (test items: image | ground truth | each
    model | centre prior) and ``config.yaml``. Returns ``{"rows": [...], "markdown": str}``.
    """

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
            rows.append(
                {
                    "set": s.name,
                    "method": label,
                    "ref": ref,
                    "input_size": size,
                    **{k: res["model"][k] for k in ("n", "AP", "F1", "IoU")},
                }
            )
        grid_maps[label] = [_resize_map(o[0], show) for o in _outputs(model, test, idx, size)]
        del model
    size = cfg.model.input_size
    for s in sets:  # the centred prior on the same masks, at model.input_size
        prior = MetricAccumulator()
        for batch in s.batches(size, cfg.evaluate.batch_size):
            b, _, h, w = batch["mask"].shape
            prior.update(torch.from_numpy(centre_prior(h, w)).expand(b, 1, h, w), batch["mask"], batch["id"])
        m = prior.compute()
        rows.append(
            {
                "set": s.name,
                "method": "centre prior",
                "ref": "",
                "input_size": size,
                **{k: m[k] for k in ("n", "AP", "F1", "IoU")},
            }
        )
    rows.sort(key=lambda r: ([s.name for s in sets].index(r["set"]), r["method"] == "centre prior"))
    columns = ["set", "method", "input_size", "n", "AP", "F1", "IoU"]
    md = (
        "AP and IoU x 100, F1 in [0, 1]; each model at its own input size, per image as the reference.\n\n"
        + _markdown(rows, columns)
    )
    write_text_atomic(out / "comparison.md", md)
    _write_csv(out / "comparison.csv", rows, columns + ["ref"])
    items = [test.item(i, show) for i in idx]
    grid_maps["centre prior"] = [centre_prior(show, show)] * len(idx)
    figures.grid_figure(
        [im for im, _ in items],
        [m for _, m in items],
        grid_maps,
        [test.ids[i] for i in idx],
        out / "grid.png",
        title=f"{test.name}: shown at {show}x{show}",
    )
    save_resolved(cfg, out)
    return {"rows": rows, "markdown": md}
