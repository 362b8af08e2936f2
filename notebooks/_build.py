"""Write ``notebooks/walkthrough.ipynb`` from the cells below: ``python notebooks/_build.py``.

The notebook is generated so that its source stays reviewable as plain Python and the committed file carries no
outputs. Cells tagged ``data``, ``contact-sheet``, ``model``, ``predict``, ``attention``, ``runs``, ``curves`` and
``registry`` are the ones ``tests/test_notebooks.py`` inspects.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
TARGET = HERE / "walkthrough.ipynb"


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(text.strip())


def code(text: str, tag: str | None = None) -> nbformat.NotebookNode:
    cell = new_code_cell(text.strip())
    if tag:
        cell.metadata["tags"] = [tag]
    return cell


CELLS = [
    md("""
# DIRL pipeline walkthrough

This notebook tours what `make run` (that is, `dvc repro`) leaves in the workspace:

1. **the data**: the Arrow shards of real photos (`data/shards`) and the composites synthesized from them
   (`data/synth`);
2. **the model**: the registered model loaded from the MLflow registry, its predictions on test composites, and
   the five mask-guided dual attention maps A0-A4 of DIRL;
3. **the experiments**: every MLflow run of the experiment side by side, and their validation curves.

It only reads: nothing it does changes the pipeline's outputs. Run it from anywhere inside the project; the first
cell finds the project root (the folder holding `params.yaml`) and works from there.
"""),
    code("""
import os
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a notebook without ipywidgets
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

root = Path.cwd().resolve()
while not (root / "params.yaml").is_file():
    if root == root.parent:
        raise FileNotFoundError(f"no params.yaml in {Path.cwd()} or above: open this notebook inside the project")
    root = root.parent
os.chdir(root)
print("project root:", root)
"""),
    code("""
%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dirl.config import load_config
from dirl.tracking import tracking_uri

cfg = load_config("params.yaml")
uri = tracking_uri(cfg, root)
print("model:", cfg.model.name, "at", cfg.model.input_size, "px | MLflow store:", uri)
"""),
    md("""
## 1. The data

`preprocess` stores every item once, resized to `data.stored_size`, in Arrow IPC shards with a `manifest.json`
(rows, split and source counts, a sha256 per shard). With the built-in sample the shards hold real photos with an
object mask (`source = photo`); `synthesize` then makes `synth.per_image` composites per photo by transferring the
colours of another photo onto the object with one of several methods (`source = synthesized`). Photos never cross
splits: a composite keeps the split of its photo.
"""),
    code("""
from dirl.data.shards import read_manifest, read_table

folders = {"shards": Path("data/shards"), "synth": Path("data/synth")}
found = {k: d for k, d in folders.items() if (d / "manifest.json").is_file()}
if not found:
    raise FileNotFoundError(f"no shards in {root / 'data'}: run `make run` (or `dvc repro`) first")
for name, d in found.items():
    m = read_manifest(d)
    print(f"{d}: {m['rows']} rows, {m['bytes'] / 1e6:.1f} MB, splits {m['splits']}, sources {m['sources']}")
"""),
    md("""
Counts per split and per kind: the source of each shard row, and for synthesized composites the colour-transfer
method that made it.
"""),
    code("""
tables = {name: read_table(d, columns=["split", "source", "synth_method"]).to_pandas() for name, d in found.items()}
rows = pd.concat([t.assign(folder=name) for name, t in tables.items()], ignore_index=True)
rows["kind"] = rows["synth_method"].fillna(rows["source"])
counts = pd.crosstab([rows["folder"], rows["kind"]], rows["split"], margins=True, margins_name="total")
counts
""", tag="data"),
    md("""
### A contact sheet of synthesized composites

One line per composite: the composite, its inharmonious-region mask, the real photo it was made from and the mask
drawn over the composite. `dirl.data.show.contact_sheet` writes it as a PNG (`dirl data show` does the same from
the command line). One composite per method, from the test split where there is one.
"""),
    code("""
import tempfile

from IPython.display import Image, display

from dirl.data.show import contact_sheet

sheet_dir = Path("data/synth") if "synth" in found else Path("data/shards")
columns = ["id", "source", "synth_method", "image", "mask", "real"]
table = read_table(sheet_dir, "test", columns)  # memory-mapped: nothing is decoded yet
table = table if table.num_rows else read_table(sheet_dir, None, columns)
first = {}  # kind -> index of its first row
for i, (method, source) in enumerate(zip(table["synth_method"].to_pylist(), table["source"].to_pylist())):
    first.setdefault(method or source, i)
sheet_rows = table.take(sorted(first.values())[:6]).to_pylist()
with tempfile.TemporaryDirectory() as tmp:
    sheet = contact_sheet(sheet_rows, Path(tmp) / "contact_sheet.png")
    display(Image(filename=str(sheet)))  # reads the PNG now
""", tag="contact-sheet"),
    md("""
## 2. The model

`register` logs the trained weights as an MLflow model and registers a new version of `register.model_name` with
the alias `@challenger`; `dirl promote` moves `@champion` to the challenger when it beats the current champion on
the test composites. We load `@champion` when there is one, else `@challenger`, else the newest version (and the
plain weights file `results/train/model.pt` when nothing is registered yet).
`dirl.lifecycle.resolve.load_model_ref` accepts any of these references.
"""),
    code("""
import mlflow
from mlflow.exceptions import MlflowException

from dirl.lifecycle.resolve import load_model_ref

mlflow.set_tracking_uri(uri)
client = mlflow.MlflowClient(uri, registry_uri=uri)
name = cfg.register.model_name
try:
    aliases = dict(client.get_registered_model(name).aliases or {})
except MlflowException:
    aliases = {}
versions = sorted((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), reverse=True)
if "champion" in aliases:
    ref = f"models:/{name}@champion"
elif cfg.register.alias in aliases:
    ref = f"models:/{name}@{cfg.register.alias}"
elif versions:
    ref = f"models:/{name}/{versions[0]}"
else:
    ref = "results/train/model.pt"
model, info = load_model_ref(ref, cfg)
size = int(info.get("input_size") or cfg.model.input_size)
print(f"loaded {ref}: {info['label']}, input {size} px, aliases {aliases or 'none'}")
""", tag="model"),
    md("""
### Predictions on test composites

The evaluation set is the `evaluate.split` composites of `data/synth` and `data/shards`. Each image is resized to
the model's input size and ImageNet-normalised; the model's first output is the final probability map. The title
gives the IoU of the map binarised at 0.5, as the evaluation computes it.
"""),
    code("""
import torch

from dirl.workspace import SHARD_DIRS
from dirl.lifecycle.evaluate import pick_indices, shard_set
from dirl.metrics import per_image_metrics

evalset = shard_set(SHARD_DIRS, cfg.evaluate.split, cfg.evaluate.split)
idx = pick_indices(len(evalset), 4)
batch = next(evalset.batches(size, len(idx), idx))
with torch.inference_mode():
    outputs = [o.float().numpy()[:, 0] for o in model.eval()(batch["image"])]  # each (N, S, S)
images = [evalset.item(i, size)[0] for i in idx]
masks = batch["mask"].numpy()[:, 0]
iou = per_image_metrics(outputs[0], masks)["iou"] * 100
print(f"{len(evalset)} {cfg.evaluate.split} composites; the model returns {len(outputs)} map(s) per image")
""", tag="predict-setup"),
    code("""
fig, axes = plt.subplots(len(idx), 3, figsize=(6.5, 2.2 * len(idx)), squeeze=False)
for r, (img, gt, pred) in enumerate(zip(images, masks, outputs[0])):
    titles = (batch["id"][r], "ground truth", f"prediction, IoU {iou[r]:.1f}")
    for ax, pic, title in zip(axes[r], (img, gt, pred), titles):
        ax.imshow(pic, cmap=None if pic.ndim == 3 else "gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
plt.tight_layout()
plt.show()
""", tag="predict"),
    md("""
### The mask-guided dual attention maps

DIRL's decoder applies a Mask-guided Dual Attention (MDA) block at every level of the feature pyramid; each
block predicts an attention map A that is supervised by the ground-truth mask. The model returns
`[final, A4, A3, A2, A1, A0]`, all resized to the input: A0 comes from the finest level, A4 from the coarsest.
Each map is drawn on its own grey scale (black = its minimum, white = its maximum, the range in the title) so that
the pattern shows even while the values are still close together early in training; a map spanning less than
0.01 is flat and drawn on the 0-1 scale. Models without attention maps (`unet`,
`deeplabv3`) return only the final map.
"""),
    code("""
if len(outputs) >= 6:
    attn = dict(zip(["A4", "A3", "A2", "A1", "A0"], outputs[1:6]))  # name -> (N, S, S)
    shown = min(2, len(idx))
    fig, axes = plt.subplots(shown, 7, figsize=(14, 2.3 * shown), squeeze=False)
    for r in range(shown):
        axes[r, 0].imshow(images[r])
        axes[r, 0].set_title(batch["id"][r], fontsize=8)
        axes[r, 1].imshow(masks[r], cmap="gray", vmin=0, vmax=1)
        axes[r, 1].set_title("ground truth", fontsize=8)
        for ax, a in zip(axes[r, 2:], ("A0", "A1", "A2", "A3", "A4")):
            m = attn[a][r]
            lo, hi = (m.min(), m.max()) if np.ptp(m) >= 0.01 else (0.0, 1.0)  # a flat map on the 0-1 scale
            ax.imshow(m, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"{a} [{m.min():.2f}, {m.max():.2f}]", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    plt.tight_layout()
    plt.show()
else:
    print(f"{info['model']} has no attention maps: it returns {len(outputs)} map")
""", tag="attention"),
    md("""
## 3. The experiments in MLflow

Every training run (and every tuning trial, nested under its tuning run) logs its parameters, per-epoch metrics
and files to the experiment `mlflow.experiment` (metrics grouped as `train/`, `val/`, `perf/`); every evaluation
is a run of its own (`stage` evaluate), tagged with the training run it evaluated (`dirl.train_run_id`), holding
the test metrics (`test/IoU` ...) and the centred Gaussian prior's (`test/prior_IoU` ...). The table joins the
pipeline's evaluation to its training run. `make mlflow-ui` prints the address of the experiment's runs view.
"""),
    code("""
wanted = {
    "tags.mlflow.runName": "run", "tags.stage": "stage", "status": "status", "start_time": "started",
    "params.model.name": "model", "params.model.input_size": "input", "params.train.lr": "lr",
    "params.train.weight_decay": "wd", "params.train.epochs": "epochs", "metrics.val/best_IoU": "best val IoU",
    "metrics.test/IoU": "test IoU", "metrics.test/prior_IoU": "prior IoU", "metrics.test/AP": "test AP",
    "run_id": "run_id",
}
all_runs = mlflow.search_runs(experiment_names=[cfg.mlflow.experiment], order_by=["start_time DESC"])
all_runs = all_runs.reindex(columns=sorted(set(all_runs.columns) | set(wanted) | {"tags.dirl.evaluation",
                                                                                 "tags.dirl.train_run_id"}))
evaluated = all_runs[all_runs["tags.dirl.evaluation"] == "pipeline"]  # newest first: one per training run
evaluated = evaluated.drop_duplicates("tags.dirl.train_run_id").set_index("tags.dirl.train_run_id")
trained = all_runs[all_runs["tags.stage"] != "evaluate"].copy()
for col in ("metrics.test/IoU", "metrics.test/prior_IoU", "metrics.test/AP"):  # from the run's evaluation
    trained[col] = trained["run_id"].map(evaluated[col])
runs = trained.reindex(columns=list(wanted)).rename(columns=wanted)
runs[["lr", "wd"]] = runs[["lr", "wd"]].apply(pd.to_numeric)  # params are logged as strings
runs
""", tag="runs"),
    md("""
Validation IoU per epoch, one line per run that logged it (tuning trials usually stop after a few epochs).
"""),
    code("""
fig, ax = plt.subplots(figsize=(7, 3.5))
for run_id, run_name in zip(runs["run_id"], runs["run"]):
    history = sorted(client.get_metric_history(run_id, "val/IoU"), key=lambda m: m.step)
    if history:
        ax.plot([m.step for m in history], [m.value for m in history], "o-", label=str(run_name)[:40])
ax.set_xlabel("epoch")
ax.set_ylabel("validation IoU (x100)")
ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
ax.grid(alpha=0.3)
if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
plt.show()
""", tag="curves"),
    md("""
### The registry

Every registered version with its aliases and the test metrics it was tagged with at registration.
"""),
    code("""
by_version = {}
for alias, v in aliases.items():
    by_version.setdefault(str(v), []).append("@" + alias)
registry = pd.DataFrame(
    [{"version": int(v.version), "aliases": " ".join(by_version.get(str(v.version), [])),
      "model": v.tags.get("model"), "test IoU": v.tags.get("metric.test/IoU"),
      "prior IoU": v.tags.get("metric.test/prior_IoU"), "run_id": v.run_id}
     for v in client.search_model_versions(f"name = '{name}'")],
    columns=["version", "aliases", "model", "test IoU", "prior IoU", "run_id"],
)
registry.sort_values("version", ascending=False)
""", tag="registry"),
    md("""
## Where next

- `dirl predict --model models:/dirl@champion --out pred/ photos/`: masks and overlays for your own images.
- `dirl promote` (or `dirl promote --force --reason ...`) and `dirl rollback`: move the `@champion` alias.
- `dirl compare models:/dirl@champion models:/dirl@challenger`: several models on the same test set.
- `results/evaluate/`: metrics, PR curve, the qualitative grid and the attention-map figure of the last run;
  `dvc plots show` draws the DVC plots, `make mlflow-ui` opens the MLflow UI.
- Edit `params.yaml` and run `dvc repro` again: only the stages whose inputs changed run.
"""),
]


def build() -> nbformat.NotebookNode:
    """The notebook with stable cell ids (``cell-NN``), so that rebuilding an unchanged notebook is a no-op."""
    nb = new_notebook(cells=CELLS)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nb


def main() -> int:
    nb = build()
    tmp = TARGET.with_name(f".{TARGET.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(TARGET)
    print(f"wrote {TARGET} ({len(nb.cells)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
