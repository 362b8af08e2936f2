"""Per synthesis method and per subset: the model's IoU beside the centred prior's, from an evaluation's outputs.

    python benchmarks/transfer_report.py [--workspace .]

Reads ``results/evaluate/per_image.csv`` (every evaluated composite, model and prior) and the ``synth_method`` of
each synthesized test row in ``data/synth``; prints one markdown table: per set, per group (the synthesis method
for the synthesized test split, the iHarmony4 subset for an extra set such as ``ihd_dev``), n, model IoU, prior IoU
and the margin, with each set's total first. With ``synth.foreign_shapes``, the synthesized split's composites on the
photo's own object (ids ``<photo>_i<k>``) and on another photo's outline (``<photo>_x<k>``) get a total each, and a
foreign composite's method reads ``<method> (foreign)``.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from dirl.data.build import FOREIGN_ID as FOREIGN
from dirl.data.shards import read_table


def synth_methods(synth: Path) -> dict[str, str]:
    """``{row id: synth_method}`` of the test rows in the shard folder ``synth``."""
    table = read_table(synth, "test", ["id", "synth_method"])
    return dict(zip(table["id"].to_pylist(), table["synth_method"].to_pylist()))


def report(workspace: Path) -> str:
    rows = list(csv.DictReader((workspace / "results/evaluate/per_image.csv").open()))
    methods = synth_methods(workspace / "data/synth")
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        group = methods.get(r["id"], r["subset"]) if r["set"] == "test" else r["subset"]
        pair = (float(r["iou"]), float(r["prior_iou"]))
        groups[(r["set"], "all")].append(pair)
        if r["set"] == "test" and r["id"] in methods and FOREIGN.search(r["id"]):
            group += " (foreign)"
            groups[(r["set"], "all on foreign outlines")].append(pair)
        elif r["set"] == "test" and r["id"] in methods:
            groups[(r["set"], "all on the photo's object")].append(pair)
        groups[(r["set"], group)].append(pair)
    lines = ["| set | group | n | model IoU | prior IoU | margin |", "|---|---|---|---|---|---|"]
    for (name, group), pairs in sorted(
        groups.items(), key=lambda kv: (kv[0][0] != "test", kv[0][0], not kv[0][1].startswith("all"), kv[0][1])
    ):
        model = 100 * sum(p[0] for p in pairs) / len(pairs)
        prior = 100 * sum(p[1] for p in pairs) / len(pairs)
        lines.append(f"| {name} | {group} | {len(pairs)} | {model:.2f} | {prior:.2f} | {model - prior:+.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=Path("."))
    print(report(ap.parse_args().workspace))
