"""preprocess: ``data/raw/`` -> ``data/shards/`` (Arrow shards of photos or real composites, each with its split).

Every item is decoded, checked, resized (``data.stored_size``; ``data.keep_aspect``) and written once
(:func:`dirl.data.preprocess.write_shards`, on the data engine of ``cluster.data_engine``). The bad fraction is taken
over every item seen: those stored, those found bad (at scan time or when decoded) and those a filter left out.
``results/preprocess/issues.json`` names each bad or left-out item with its reason, on success and on failure.
"""

from __future__ import annotations

import json
import sys
import time

from dirl.cluster import data_workers
from dirl.config import Config
from dirl.data.ihd import ihd_items
from dirl.data.issues import StageReport, finish_stage
from dirl.data.preprocess import write_shards
from dirl.data.sources import photo_items
from dirl.stages.contract import main
from dirl.workspace import RAW, RAW_INDEX, SHARDS

PARAMS = (
    "data.iharmony4",
    "data.max_bad_fraction",
    "data.seed",
    "data.stored_size",
    "data.keep_aspect",
    "data.test_fraction",
    "data.val_fraction",
)


def run(cfg: Config) -> dict:
    """Shard ``data/raw`` into ``data/shards``; returns the summary (results/preprocess/)."""
    t0 = time.time()
    with StageReport("preprocess") as issues:
        if not RAW_INDEX.is_file():
            raise FileNotFoundError(f"{RAW_INDEX} not found: run `dvc repro ingest` (or `dirl data ingest`) first")
        index = json.loads(RAW_INDEX.read_text())
        if index["kind"] == "photos":
            items = photo_items(RAW, index, cfg.data, issues)
            names = {it["id"] for it in items}
        else:
            items, names = ihd_items(index, cfg.data, issues)
        dropped = len((issues.bad_items() | issues.excluded_items()) - names)  # seen, not passed on
        manifest = write_shards(
            items,
            SHARDS,
            size=cfg.data.stored_size,
            workers=data_workers(cfg),
            issues=issues,
            max_bad_fraction=cfg.data.max_bad_fraction,
            dropped=dropped,
            engine=cfg,
            keep_aspect=cfg.data.keep_aspect,
        )
    seconds = time.time() - t0
    total = len(items) + dropped
    summary = {
        "items": total,
        "rows": manifest["rows"],
        "bad": len(issues),
        "excluded": len(issues.excluded_items()),
        "splits": manifest.get("splits", {}),
        "dataset_hash": manifest.get("dataset_hash"),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(items) / max(seconds, 1e-9), 1),
    }
    return finish_stage("preprocess", summary, issues, total)


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "preprocess"))
