"""ingest: ``data.source`` -> ``data/raw/`` (the built-in sample, a photo folder, or iHarmony4 archives).

The new ``data/raw`` is built in a hidden sibling (``data/.raw.tmp-<pid>``) and swapped in only once the bad fraction
is within ``data.max_bad_fraction``: after a failure, or a kill, the previous ``data/raw`` (its ``index.json``
included) is left exactly as it was. ``results/ingest/issues.json`` names every bad item, either way.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from dirl.config import Config
from dirl.data.download import ingest_archives
from dirl.data.issues import StageReport, finish_stage
from dirl.data.sources import ingest_photo_folder, sample_photos
from dirl.io import staging_dir, swap_in, write_json_atomic
from dirl.stages.contract import main
from dirl.workspace import DOWNLOADS, RAW, RAW_INDEX

PARAMS = ("data.source", "data.photos_dir", "data.iharmony4", "data.stored_size", "data.max_bad_fraction")


def run(cfg: Config) -> dict:
    """Bring ``data.source`` into ``data/raw`` with its ``index.json``; returns the summary (results/ingest/)."""
    t0 = time.time()
    source = cfg.data.source
    with StageReport("ingest") as issues:
        stage = staging_dir(RAW)  # data/.raw.tmp-<pid>; work folders of killed runs removed
        try:
            if source == "sample":
                items = sample_photos(stage / "photos", size=cfg.data.stored_size)
                index = {"kind": "photos", "root": "photos", "subset": "sample"}
                total = len(items)
            elif source == "photos":
                if not cfg.data.photos_dir:
                    raise ValueError(
                        "data.source=photos needs data.photos_dir (a folder with images/ + masks/ or a COCO json)"
                    )
                counts = ingest_photo_folder(Path(cfg.data.photos_dir), stage / "photos", issues)
                index = {"kind": "photos", "root": "photos", "subset": Path(cfg.data.photos_dir).name}
                total = counts["photos"] + len(issues)  # every item seen: the kept and the bad
            else:
                index, total = ingest_archives(cfg.data.iharmony4, issues, stage)
            issues.check(total, cfg.data.max_bad_fraction)  # writes the full report; raises TooManyBadItems
            if total == 0:
                raise ValueError(
                    f"ingest found no items in data.source={source}; check its settings "
                    f"(data.photos_dir, data.iharmony4.*)"
                )
            write_json_atomic(stage / RAW_INDEX.name, index)
            swap_in(stage, RAW.absolute())
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if index["kind"] == "iharmony4" and not cfg.data.iharmony4.extracted_dir:
            shutil.rmtree(DOWNLOADS, ignore_errors=True)  # what it held is in data/raw/archives now
    summary = {"source": source, "items": total, "bad": len(issues), "seconds": round(time.time() - t0, 2)}
    if index["kind"] == "iharmony4":
        summary["subsets"] = index.get("counts", {})
    return finish_stage("ingest", summary, issues, total)


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "ingest"))
