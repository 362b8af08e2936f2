"""synthesize: ``data/shards/`` -> ``data/synth/`` (new composites from the real photos and their object masks).

Chunks of photos run on the data engine (local processes, or Ray tasks across the cluster's nodes); this process
writes the rows in input order, so the output is the same byte for byte either way (:func:`dirl.data.build.synthesize`
holds the chunk workers). Under ``data.source: iharmony4`` it writes an empty set, and says so in one line, unless
``synth.augment_iharmony4`` adds composites to the training split (never to validation or test).
"""

from __future__ import annotations

import sys

from dirl.config import Config
from dirl.data.build import synthesize
from dirl.stages.contract import main

PARAMS = ("data.source", "data.max_bad_fraction", "synth")


def run(cfg: Config) -> dict:
    """Make ``synth.per_image`` composites per real photo into ``data/synth``; returns the summary."""
    return synthesize(cfg)


if __name__ == "__main__":
    sys.exit(main(run, PARAMS, "synthesize"))
