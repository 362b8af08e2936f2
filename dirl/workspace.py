"""Every path of the workspace, in one place.

    data/raw/                 ingest: the source as fetched (photos + masks, or extracted iHarmony4)
    data/.raw-downloads/      archives being fetched (a partial download survives a failed ingest)
    data/shards/              preprocess: Arrow shards + manifest.json
    data/synth/               synthesize: Arrow shards of new composites + manifest.json
    results/<stage>/          each stage's metrics, reports, figures (``results("train") / "model.pt"``)
    mlflow.db, mlartifacts/   the default MLflow store (SQLite + artifacts)       } in the state root, which
    ray_results/              Ray Train / Tune run folders and checkpoints       } outlives DVC's temp copies

Paths are relative to the workspace (the folder holding ``params.yaml``; the stages run there). The *state root*
holds what must outlive one checkout: it is ``$DIRL_STATE_DIR`` when set, else the workspace, except inside
the temporary copy that ``dvc exp run --queue`` / ``--temp`` runs in (``<repo>/.dvc/tmp/exps/...``), whose
git-ignored files DVC throws away: there it is the repository that queued the experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

RAW = Path("data/raw")
RAW_INDEX = RAW / "index.json"  # what ingest brought in: {kind, root(s), subset, counts}
DOWNLOADS = Path("data/.raw-downloads")
SHARDS = Path("data/shards")
SYNTH = Path("data/synth")
SHARD_DIRS = (SYNTH, SHARDS)  # the shard folders training and evaluation read (those that exist)
RESULTS = Path("results")

TUNE_BEST = RESULTS / "tune" / "best.yaml"
MODEL = RESULTS / "train" / "model.pt"
RUN_INFO = RESULTS / "train" / "run.json"
EVAL_SCORES = RESULTS / "evaluate" / "scores.json"  # model and centred prior per set (metrics.json: model only)

DVC_TEMP = (".dvc", "tmp", "exps")  # where DVC runs queued and --temp experiments


def results(stage: str) -> Path:
    """``results/<stage>``: the stage's outputs."""
    return RESULTS / stage


def root(start: str | os.PathLike | None = None) -> Path:
    """The project workspace: the nearest parent holding params.yaml (else the current directory)."""
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists():
            return p
    return here


def state_root(start: str | os.PathLike | None = None) -> Path:
    """Where the default MLflow store and ``ray_results`` live (module docstring)."""
    if os.environ.get("DIRL_STATE_DIR"):
        return Path(os.environ["DIRL_STATE_DIR"]).expanduser().resolve()
    ws = root(start)
    parts = ws.parts
    n = len(DVC_TEMP)
    for i in range(len(parts) - n):
        if parts[i : i + n] == DVC_TEMP:
            return Path(*parts[:i])
    return ws


def mlflow_db(start: str | os.PathLike | None = None) -> Path:
    return state_root(start) / "mlflow.db"


def ray_results(start: str | os.PathLike | None = None) -> Path:
    return state_root(start) / "ray_results"


def shard_dirs(base: str | os.PathLike | None = None) -> list[Path]:
    """``data/shards`` and ``data/synth`` under ``base`` (default: the workspace) that hold a manifest."""
    base = Path(base) if base else root()
    dirs = [base / SHARDS, base / SYNTH]
    found = [d for d in dirs if (d / "manifest.json").is_file()]
    if not found:
        raise FileNotFoundError(
            f"no shards in {dirs[0]} or {dirs[1]}: run the preprocess (and synth) stages "
            f"first (`dvc repro preprocess`), or pass data_dirs"
        )
    return found
