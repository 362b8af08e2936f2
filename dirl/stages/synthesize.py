"""synthesize: ``data/shards/`` -> ``data/synth/`` (new composites from the real photos and their object masks).

Chunks of photos run on the data engine (local processes, or Ray tasks across the cluster's nodes); this process
writes the rows in input order, so the output is the same byte for byte either way
(:func:`dirl.data.build.write_composites` holds the chunk workers). The new ``data/synth`` is built in a hidden
sibling (``data/.synth.tmp-<pid>``) and swapped in only once the bad fraction is within ``data.max_bad_fraction``:
after a failure the previous ``data/synth`` is left as it was. Under ``data.source: iharmony4`` it writes an empty
set, and says so in one line, unless ``synth.augment_iharmony4`` adds composites to the training split (never to
validation or test).
"""

from __future__ import annotations

import shutil
import sys
import time

from dirl.config import Config
from dirl.data.build import reference_rows, synth_sources, synthesizes, write_composites, write_empty_synth
from dirl.data.issues import StageReport, finish_stage
from dirl.data.shards import write_manifest
from dirl.io import staging_dir, swap_in
from dirl.stages.contract import main
from dirl.workspace import SHARDS, SYNTH

PARAMS = ("data.source", "data.max_bad_fraction", "synth")


def run(cfg: Config) -> dict:
    """Make ``synth.per_image`` composites per real photo into ``data/synth``; returns the summary."""
    t0 = time.time()
    sources = synth_sources(cfg)
    if not sources and not synthesizes(cfg):  # iHarmony4 trains on its own composites: an empty set, said once
        return write_empty_synth(cfg, t0)
    if not sources:
        raise ValueError(
            f"{SHARDS} has no real photos to synthesize from (data.source={cfg.data.source}); "
            "use source sample/photos, or set synth.augment_iharmony4: true for iHarmony4"
        )
    refs = reference_rows(sources, seed=cfg.synth.seed, by_category=cfg.synth.recipe == "iharmony4-like")
    with StageReport("synthesize") as issues:  # the full report, on success and on failure
        stage = staging_dir(SYNTH)  # data/.synth.tmp-<pid>; work folders of killed runs removed
        try:
            shards, methods = write_composites(cfg, sources, refs, stage, issues)
            issues.check(len(sources), cfg.data.max_bad_fraction)  # raises TooManyBadItems
            manifest = write_manifest(
                stage, shards, {"per_image": cfg.synth.per_image, "methods": methods, "seed": cfg.synth.seed}
            )
            swap_in(stage, SYNTH.absolute())
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    seconds = time.time() - t0
    summary = {
        "real_images": len(sources),
        "composites": manifest["rows"],
        "bad": len(issues),
        "methods": methods,
        "splits": manifest.get("splits", {}),
        "seconds": round(seconds, 2),
        "composites_per_s": round(manifest["rows"] / max(seconds, 1e-9), 1),
    }
    return finish_stage("synthesize", summary, issues, len(sources))


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "synthesize"))
