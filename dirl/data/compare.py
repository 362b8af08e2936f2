"""``dirl data compare A B``: the distributions that tell two composite sets apart, side by side.

For every composite (a shard folder's rows: ``data/shards``, ``data/synth``; or an iHarmony4-layout folder such as
``../shared/data/ihd_dev``) :func:`region_stats` measures, at a working size of at most ``WORK_SIDE`` pixels:

- ``area``: the foreground's fraction of the image; ``cx``, ``cy``: its centre of mass, as fractions of the width
  and height (0.5, 0.5 = the image centre); ``border``: the fraction of the image's edge pixels inside the region
  (an object within the frame: ~0; sky, road, a wall: large);
- ``prior``: the IoU of the centred prior (:func:`dirl.metrics.centre_prior`, thresholded as the evaluation does)
  with the region, at ``PRIOR_SIDE`` pixels: area, centre and shape in one figure, and the baseline every model of
  such a set is scored beside;
- the region's shift against a ring of background around it (the mask dilated by ``RING`` x sqrt(H * W) pixels,
  minus the mask), in CIE Lab (L in [0, 100]): ``dL``, ``da``, ``db`` = mean over the region - mean over the ring,
  ``dE`` = |(dL, da, db)|, and ``contrast`` = std(L) over the region / std(L) over the ring;
- ``shift``: |mean Lab of the composite's region - mean Lab of the real image's region|, the change the
  composite made (only where the real image is known; NaN elsewhere).

:func:`compare` groups the composites by synthesis method (synthesized rows) or subset (genuine composites,
photos), and writes into an output folder ``compare.png`` (one histogram per statistic, both sets overlaid),
``compare.md`` (the table) and ``compare.json`` (every figure, plus the per-composite values). The gap between
the sets is given per statistic as the two-sample Kolmogorov-Smirnov distance (0 = same distribution,
1 = disjoint).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dirl.data.ihd import find_subsets, scan
from dirl.data.images import decode_image, decode_mask
from dirl.data.issues import IssueLog
from dirl.data.shards import read_table
from dirl.metrics import centre_prior, per_image_metrics

WORK_SIDE = 256  # statistics are taken at most at this side (larger images shrink with an area filter)
RING = 0.06  # ring width, as a fraction of sqrt(H * W): ~15 px at 256 x 256
PRIOR_SIDE = 96  # the side at which the centred prior's IoU is taken (the CPU profiles' input size)
STATS = ("area", "cx", "cy", "border", "prior", "dL", "da", "db", "dE", "contrast", "shift")
LABELS = {
    "area": "foreground area (fraction of the image)",
    "cx": "region centre x (fraction of the width)",
    "cy": "region centre y (fraction of the height)",
    "border": "image edge inside the region (fraction)",
    "prior": "centred prior's IoU with the region",
    "dL": "ΔL region - ring (Lab L, 0-100)",
    "da": "Δa region - ring (Lab a)",
    "db": "Δb region - ring (Lab b)",
    "dE": "|ΔE| region vs ring (Lab)",
    "contrast": "contrast: std L region / std L ring (log2)",
    "shift": "|ΔE| composite vs real, region (Lab)",
}
DEFAULT_LIMIT = 2000


def lab(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 CIE Lab (L in [0, 100], a and b about [-127, 127])."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def ring_mask(mask: np.ndarray, ring: float = RING) -> np.ndarray:
    """The background ring around ``mask`` ((H, W) {0, 1}): the mask dilated by ``ring`` x sqrt(H W) pixels
    (an elliptic kernel, at least 1 px), minus the mask. Returns (H, W) bool."""
    h, w = mask.shape
    r = max(1, int(round(ring * np.sqrt(h * w))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    m = mask.astype(np.uint8)
    return (cv2.dilate(m, kernel) > 0) & (m == 0)


def edge_share(mask: np.ndarray) -> float:
    """The fraction of the image's edge pixels inside ``mask`` ((H, W) bool or {0, 1})."""
    m = mask.astype(bool)
    return float(np.concatenate([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]]).mean())


def prior_iou(mask: np.ndarray, side: int = PRIOR_SIDE) -> float:
    """IoU of the centred prior with ``mask`` ((H, W) bool), both at ``side`` x ``side`` as the evaluation sees them."""
    m = cv2.resize(mask.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) > 0.5  # (side, side)
    prior = centre_prior(side, side)[None]  # (1, side, side)
    return float(per_image_metrics(prior, m[None].astype(np.float32))["iou"][0])


def _shrink(image: np.ndarray, mask: np.ndarray, real: np.ndarray | None, side: int):
    h, w = mask.shape
    s = side / max(h, w)
    if s >= 1.0:
        return image, mask, real
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    mask = (cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5).astype(np.uint8)
    if real is not None:
        real = cv2.resize(real, size, interpolation=cv2.INTER_AREA)
    return image, mask, real


def region_stats(
    image: np.ndarray, mask: np.ndarray, real: np.ndarray | None = None, ring: float = RING, side: int = WORK_SIDE
) -> dict[str, float]:
    """The statistics of one composite (see the module docstring): ``{stat: value}``, NaN where undefined
    (an empty mask; an empty ring; no real image for ``shift``). ``contrast`` is the plain ratio here (the
    table and figure show its log2)."""
    nan = float("nan")
    out = dict.fromkeys(STATS, nan)
    if real is not None and real.shape != image.shape:
        real = None
    image, mask, real = _shrink(image, mask, real, side)
    m = mask.astype(bool)
    if not m.any():
        return out
    h, w = m.shape
    ys, xs = np.nonzero(m)
    out["area"] = float(m.mean())
    out["cx"] = float((xs.mean() + 0.5) / w)
    out["cy"] = float((ys.mean() + 0.5) / h)
    out["border"] = edge_share(m)
    out["prior"] = prior_iou(m)
    c = lab(image)
    fg = c[m]
    rg = ring_mask(m, ring)
    if rg.any():
        bg = c[rg]
        d = fg.mean(axis=0) - bg.mean(axis=0)
        out["dL"], out["da"], out["db"] = (float(v) for v in d)
        out["dE"] = float(np.linalg.norm(d))
        out["contrast"] = float(fg[:, 0].std() / max(float(bg[:, 0].std()), 1e-3))
    if real is not None:
        out["shift"] = float(np.linalg.norm(fg.mean(axis=0) - lab(real)[m].mean(axis=0)))
    return out


# ----------------------------------------------------------------------------- reading a set


@dataclass
class Item:
    id: str
    group: str
    image: np.ndarray
    mask: np.ndarray
    real: np.ndarray | None = None


@dataclass
class SetStats:
    """One set's per-composite statistics: ``values[stat]`` is an (N,) array aligned with ``ids`` and ``groups``."""

    name: str
    path: str
    kind: str  # "shards" | "iharmony4"
    ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, stat: str, group: str | None = None) -> np.ndarray:
        """Finite values of ``stat`` (``contrast`` as log2), of one group or all."""
        v = self.values[stat]
        if group is not None:
            v = v[np.asarray(self.groups) == group]
        if stat == "contrast":
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.log2(v)
        return v[np.isfinite(v)]


def _stride(n: int, limit: int) -> np.ndarray:
    """At most ``limit`` of ``range(n)``, evenly spread (deterministic)."""
    if limit <= 0 or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _shard_items(path: Path, split: str | None, limit: int) -> Iterator[Item]:

    table = read_table(path, split, columns=["id", "subset", "image", "mask", "real", "source", "synth_method"])
    keep = _stride(table.num_rows, limit)
    table = table.take(keep)
    cols = {k: table[k] for k in ("image", "mask", "real")}
    ids, subsets = table["id"].to_pylist(), table["subset"].to_pylist()
    sources, methods = table["source"].to_pylist(), table["synth_method"].to_pylist()
    for i in range(table.num_rows):
        image = decode_image(cols["image"][i].as_py(), f"{ids[i]}/image")
        mask, _ = decode_mask(cols["mask"][i].as_py(), f"{ids[i]}/mask")
        raw = cols["real"][i].as_py()
        real = decode_image(raw, f"{ids[i]}/real") if raw is not None and sources[i] != "photo" else None
        group = (
            methods[i]
            if sources[i] == "synthesized" and methods[i]
            else ("photo" if sources[i] == "photo" else subsets[i])
        )
        yield Item(ids[i], group, image, mask, real)


def _ihd_items(path: Path, limit: int) -> Iterator[Item]:

    items = scan(path, IssueLog("compare"))
    for i in _stride(len(items), limit):
        it = items[i]
        real = decode_image(it.real) if it.real is not None and Path(it.real).is_file() else None
        yield Item(it.id, it.subset, decode_image(it.composite), decode_mask(it.mask)[0], real)


def set_kind(path: str | Path) -> str:
    """``shards`` (a folder with manifest.json) or ``iharmony4`` (``<Subset>/composite_images/``); else raise."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a folder: give a shard folder (data/shards, data/synth) or an iHarmony4-layout folder"
        )
    if (path / "manifest.json").is_file():
        return "shards"
    if find_subsets(path):
        return "iharmony4"
    raise ValueError(
        f"{path} is neither a shard folder (no manifest.json) nor an iHarmony4-layout folder "
        f"(no <Subset>/composite_images/)"
    )


def measure(
    path: str | Path, name: str | None = None, split: str | None = None, limit: int = DEFAULT_LIMIT, ring: float = RING
) -> SetStats:
    """:func:`region_stats` of every composite of a set (at most ``limit``, evenly spread; 0 = all).
    ``split`` selects one split of a shard folder (None = all)."""
    path = Path(path)
    kind = set_kind(path)
    items = _shard_items(path, split, limit) if kind == "shards" else _ihd_items(path, limit)
    out = SetStats(name or _default_name(path), str(path), kind)
    rows = []
    for it in items:
        out.ids.append(it.id)
        out.groups.append(it.group)
        rows.append(region_stats(it.image, it.mask, it.real, ring=ring))
    out.values = {s: np.array([r[s] for r in rows], dtype=np.float64) for s in STATS}
    return out


def _default_name(path: Path) -> str:
    p = path.resolve()
    return f"{p.parent.name}/{p.name}" if p.name in ("shards", "synth") else p.name


# ----------------------------------------------------------------------------- comparing


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: max |F_a(x) - F_b(x)| over x (NaN when a set is empty)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return float("nan")
    x = np.concatenate([a, b])
    fa = np.searchsorted(a, x, side="right") / len(a)
    fb = np.searchsorted(b, x, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _summary(v: np.ndarray) -> dict:
    if not len(v):
        return {"n": 0, "median": None, "q25": None, "q75": None, "mean": None}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(len(v)), "median": float(med), "q25": float(q25), "q75": float(q75), "mean": float(v.mean())}


GAP_STATS = (
    "area",
    "cx",
    "cy",
    "border",
    "prior",
    "dL",
    "da",
    "db",
    "dE",
    "contrast",
)  # the mean KS over these is the "gap"


def table(a: SetStats, b: SetStats) -> dict:
    """Every figure of the comparison: per statistic each set's summary and the KS distance; per group each
    group's n and medians; ``gap`` = the mean KS distance over :data:`GAP_STATS`."""
    stats: dict[str, dict] = {}
    for s in STATS:
        va, vb = a.column(s), b.column(s)
        stats[s] = {"a": _summary(va), "b": _summary(vb), "ks": ks_distance(va, vb)}
    ks = [stats[s]["ks"] for s in GAP_STATS if np.isfinite(stats[s]["ks"])]
    groups: dict[str, dict] = {}
    for which, st in (("a", a), ("b", b)):
        groups[which] = {}
        for g in sorted(set(st.groups)):
            groups[which][g] = {"n": int(np.sum(np.asarray(st.groups) == g))}
            for s in STATS:
                v = st.column(s, g)
                groups[which][g][s] = float(np.median(v)) if len(v) else None
    return {
        "a": {"name": a.name, "path": a.path, "kind": a.kind, "n": len(a)},
        "b": {"name": b.name, "path": b.path, "kind": b.kind, "n": len(b)},
        "stats": stats,
        "groups": groups,
        "gap": float(np.mean(ks)) if ks else float("nan"),
    }


def _fmt(x, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def markdown(t: dict) -> str:
    """The comparison as a markdown table: per statistic the medians [interquartile range] and the KS distance,
    then per group (method or subset) the medians."""
    a, b = t["a"]["name"], t["b"]["name"]
    lines = [
        f"A = `{a}` ({t['a']['n']} composites), B = `{b}` ({t['b']['n']} composites); "
        f"gap (mean KS over {', '.join(GAP_STATS)}): **{_fmt(t['gap'])}**",
        "",
        "| statistic | A median [q25, q75] | B median [q25, q75] | KS distance |",
        "|---|---|---|---|",
    ]
    for s, row in t["stats"].items():
        cells = []
        for k in ("a", "b"):
            r = row[k]
            cells.append(f"{_fmt(r['median'])} [{_fmt(r['q25'])}, {_fmt(r['q75'])}] (n {r['n']})" if r["n"] else "—")
        lines.append(f"| {s}{' (log2)' if s == 'contrast' else ''} | {cells[0]} | {cells[1]} | {_fmt(row['ks'])} |")
    lines += [
        "",
        "| set | group | n | " + " | ".join("contrast (log2)" if s == "contrast" else s for s in STATS) + " |",
        "|---|---|---|" + "---|" * len(STATS),
    ]
    for k in ("a", "b"):
        for g, r in t["groups"][k].items():
            lines.append(f"| {k.upper()} | {g} | {r['n']} | " + " | ".join(_fmt(r[s]) for s in STATS) + " |")
    return "\n".join(lines) + "\n"


def figure(a: SetStats, b: SetStats, t: dict, path: Path) -> None:
    """One histogram per statistic (density, shared bins), both sets overlaid, KS distance in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(17, 10))
    for ax in axes.flat[len(STATS) :]:
        ax.set_visible(False)
    for ax, s in zip(axes.flat, STATS):
        va, vb = a.column(s), b.column(s)
        both = np.concatenate([va, vb])
        if len(both):
            lo, hi = np.quantile(both, [0.005, 0.995]) if len(both) > 20 else (both.min(), both.max())
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 31)
            for v, st, colour in ((va, a, "tab:blue"), (vb, b, "tab:orange")):
                if len(v):
                    ax.hist(
                        np.clip(v, lo, hi),
                        bins=bins,
                        density=True,
                        alpha=0.5,
                        color=colour,
                        label=f"{st.name} (n={len(v)})",
                    )
        ax.set_xlabel(LABELS[s])
        ax.set_ylabel("density")
        ax.set_title(f"{s}: KS {_fmt(t['stats'][s]['ks'])}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{a.name} vs {b.name}: gap (mean KS) {_fmt(t['gap'])}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare(
    path_a: str | Path,
    path_b: str | Path,
    out: str | Path | None = None,
    split: str | None = None,
    limit: int = DEFAULT_LIMIT,
    names: tuple[str | None, str | None] = (None, None),
) -> dict:
    """Measure both sets, write ``compare.png``, ``compare.md`` and ``compare.json`` into ``out`` (default
    ``results/compare/<A>-vs-<B>``), print the table and return the figures (plus ``out``)."""
    a = measure(path_a, names[0], split, limit)
    b = measure(path_b, names[1], split, limit)
    if not len(a) or not len(b):
        raise ValueError(f"nothing to compare: {a.name} has {len(a)} composites, {b.name} {len(b)}")
    t = table(a, b)
    if out is None:
        slug = lambda s: s.replace("/", "-")  # noqa: E731
        out = Path("results") / "compare" / f"{slug(a.name)}-vs-{slug(b.name)}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(t)
    (out / "compare.md").write_text(md)
    per_item = {
        st.name if st.name != a.name or st is a else f"{st.name} (B)": {
            "ids": st.ids,
            "groups": st.groups,
            **{s: [None if not np.isfinite(x) else round(float(x), 5) for x in st.values[s]] for s in STATS},
        }
        for st in (a, b)
    }
    (out / "compare.json").write_text(json.dumps({**t, "items": per_item}, indent=1))
    figure(a, b, t, out / "compare.png")
    print(md, end="")
    print(f"written: {out}/compare.png, compare.md, compare.json")
    return {**t, "out": str(out)}
