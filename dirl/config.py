"""Typed configuration: one dataclass per ``params.yaml`` section, validated on load.

``load_config("params.yaml")`` returns a :class:`Config`. Every value is checked against its
declared type and range; an unknown key, a wrong type, an out-of-range or non-finite value, a key given twice, a
missing section (a params file holds them all) or an inconsistent pair (``cluster.min_workers`` above
``cluster.num_workers``, a ``train.batch_size`` that does not split over the workers, a bad ``tune.search_space``)
raises :class:`ConfigError` whose message names the file, the dotted key and the allowed values, e.g.::

    params.yaml: train.lr = -1.0 is out of range: expected a number > 0

Stages read only their own sections (``cfg.train``, ``cfg.data`` ...), which is what ``dvc.yaml``
declares as each stage's ``params`` dependency. :func:`save_resolved` writes the resolved config next
to an output so that every result carries the exact settings that produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

MODEL_NAMES = ("dirl", "dirl_lite", "dirl_tiny", "unet", "deeplabv3")
SYNTH_METHODS = ("reinhard", "xiao", "fecker", "idt", "lighting", "lut")


class ConfigError(ValueError):
    """A params.yaml problem; the message names the file, the key and what is allowed."""


class _NotFinite(ConfigError):
    """A NaN or infinite number: reported as such, not as a wrong type."""


# Upper bounds of counts: a value above them is a typo (epochs: 1e12), not a plan.
MAX_EPOCHS = 100_000
MAX_STEPS = 1_000_000_000
MAX_BATCH = 65_536
MAX_WORKERS = 10_000
MAX_CPUS = 4_096
MAX_SEED = 2**32 - 1  # numpy's seed range
# The MLflow tracking URI schemes accepted in mlflow.tracking_uri ("" = the default store).
TRACKING_SCHEMES = ("file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


# The keys the tune stage may search, with what a null falls back to. In params.yaml such a key is null
# ("use the tune stage's value", read from results/tune/best.yaml by dirl.train.best_yaml.resolve_tuned) or a
# number, which wins: an explicit value is neither searched nor replaced. A null key takes the number here
# when tune is disabled, train.use_tune_best is false or best.yaml has no value for it. To make another
# train key searchable, add it here and let its TrainConfig field be ``<type> | None``.
TUNED_DEFAULTS: dict[str, float] = {"train.lr": 1e-4, "train.weight_decay": 1e-4, "train.lam": 1.0}


def _f(default: Any = dataclasses.MISSING, *, gt=None, ge=None, le=None, lt=None, choices=None, doc="", **kw):
    """A dataclass field with validation metadata (bounds, allowed values, help text)."""
    meta = {"gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)  # type: ignore[misc]
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta, **kw)


# ----------------------------------------------------------------------------- sections


@dataclass
class IHarmony4Config:
    archives: list[str] = _f([], doc="archive locations: http(s) URLs, local paths or s3:// URIs")
    extracted_dir: str = _f("", doc="an already extracted iHarmony4 root (used instead of archives)")
    lock_file: str = _f("data/iharmony4.lock.json", doc="records size + sha256 of each archive on first use")
    split: str = _f("le50", choices=("official", "le50", "computed"))
    train_list: str = _f("", doc="le50/official train list file; empty = computed split")
    test_list: str = _f("", doc="le50/official test list file")
    subsets: list[str] = _f(["HCOCO", "HAdobe5k", "HFlickr", "Hday2night"])


@dataclass
class DataConfig:
    source: str = _f("sample", choices=("sample", "photos", "iharmony4"))
    photos_dir: str = _f("", doc="folder with images/ + masks/ (or a COCO json) when source=photos")
    iharmony4: IHarmony4Config = _f(IHarmony4Config)
    stored_size: int = _f(
        256,
        ge=32,
        le=4096,
        doc="side of the square images stored in the shards (with keep_aspect: their shortest side)",
    )
    keep_aspect: bool = _f(
        False,
        doc="store train/val rows with their shortest side at stored_size, aspect kept (the "
        "reference's crop then sees the photo's own proportions); false = squashed to a square",
    )
    test_fraction: float = _f(0.2, ge=0.0, lt=1.0, doc="held-out photos for sample/photos sources")
    val_fraction: float = _f(0.1, ge=0.0, lt=1.0, doc="part of train held out for validation")
    max_bad_fraction: float = _f(0.05, ge=0.0, le=1.0, doc="a stage fails only above this fraction of bad items")
    seed: int = _f(42, ge=0, le=MAX_SEED)


@dataclass
class SynthConfig:
    methods: list[str] = _f(list(SYNTH_METHODS), choices=SYNTH_METHODS + ("retouch",))
    per_image: int = _f(8, ge=1, le=1000, doc="accepted composites per real image")
    max_tries: int = _f(20, ge=1, le=100_000)
    recolour: float = _f(
        0.8,
        ge=0.0,
        le=1.0,
        doc="probability that a composite starts from the photo globally "
        "recoloured by a random LUT (no colour stays specific to one photo)",
    )
    free_form: int = _f(
        0,
        ge=0,
        le=1000,
        doc="extra composites per real image whose region is a random free-form blob instead of the object mask",
    )
    augment_iharmony4: bool = _f(False, doc="also synthesize from iHarmony4 real images + masks")
    seed: int = _f(0, ge=0, le=MAX_SEED)
    recipe: str = _f(
        "mixed",
        choices=("mixed", "iharmony4-like"),
        doc="mixed = synth.methods drawn uniformly on the whole object mask (and free-form blobs); "
        "iharmony4-like = imitate iHarmony4: a crop matching target_area/target_centre, same-category "
        "references, colour transfer or retouch (retouch_share), the realism filter (realism_*)",
    )
    target_area: list[float] = _f(
        [0.22, 0.62],
        gt=0.0,
        le=5.0,
        doc="iharmony4-like: (median, sigma of ln) of the foreground area fraction; "
        "reference: ihd_dev's masks, median 0.22, quartiles 0.15-0.34 (sigma 0.62)",
    )
    area_range: list[float] = _f(
        [0.03, 0.5],
        ge=0.0,
        le=1.0,
        doc="iharmony4-like: (min, max) area fraction of a crop's region; reference: the "
        "le50 lists keep foregrounds of at most 50 %",
    )
    target_centre: list[float] = _f(
        [0.5, 0.52, 0.1],
        ge=0.0,
        le=1.0,
        doc="iharmony4-like: (mean x, mean y, sd) of the region's centre, fractions of the "
        "width/height; reference: ihd_dev medians 0.49, 0.52 (quartile sd 0.04, 0.10)",
    )
    max_zoom: float = _f(
        2.5,
        ge=1.0,
        le=10.0,
        doc="iharmony4-like: a crop keeps at least 1/max_zoom of each side "
        "(2.5: a 256 px row is never cut below ~102 px)",
    )
    retouch_share: float = _f(
        0.3,
        ge=0.0,
        le=1.0,
        doc="iharmony4-like: share of retouch-style global edits; reference: HAdobe5k + "
        "Hday2night hold 22,041 of iHarmony4's 73,146 composites (30 %)",
    )
    same_category: bool = _f(
        True,
        doc="iharmony4-like: colour-transfer references of the region's category when "
        "any exists (HCOCO/HFlickr used same-category references)",
    )
    realism_shift: list[float] = _f(
        [5.0, 20.0],
        ge=0.0,
        le=200.0,
        doc="iharmony4-like realism filter: (min, max) Lab |dE| between the region's mean "
        "colour before and after; reference: ihd_dev's composites with a real image, "
        "6.9-13.1 (n=6): at most ~1.5x the largest",
    )
    realism_ring: list[float] = _f(
        [8.0, 50.0],
        ge=0.0,
        le=200.0,
        doc="iharmony4-like realism filter: (min, max) Lab |dE| between the region and the "
        "ring around it; reference: ihd_dev's 5th-95th percentiles, 8.8-49.0",
    )

    def __post_init__(self):
        for key, n in (
            ("target_area", 2),
            ("area_range", 2),
            ("target_centre", 3),
            ("realism_shift", 2),
            ("realism_ring", 2),
        ):
            v = getattr(self, key)
            if isinstance(v, list) and len(v) != n:
                raise ConfigError(f"synth.{key} = {v!r} must hold {n} numbers")
        for key in ("area_range", "realism_shift", "realism_ring"):
            v = getattr(self, key)
            if isinstance(v, list) and len(v) == 2 and v[0] > v[1]:
                raise ConfigError(f"synth.{key} = {v!r}: the lower bound must not exceed the upper one")


@dataclass
class ModelConfig:
    name: str = _f("dirl_tiny", choices=MODEL_NAMES)
    input_size: int = _f(96, ge=32, le=2048, doc="multiple of 16; reference 224, MadisNet 256")
    pretrained: str = _f("", doc="torchvision-format resnet34 state dict (path or URL); empty = random init")
    pretrained_sha256: str = _f("")

    def __post_init__(self):
        if self.input_size % 16:
            raise ConfigError(f"model.input_size = {self.input_size} must be a multiple of 16")
        if self.name == "dirl_tiny" and self.input_size % 32:
            raise ConfigError(
                f"model.input_size = {self.input_size} must be a multiple of 32 for dirl_tiny "
                f"(its fifth stage sits at 1/32 of the input)"
            )


@dataclass
class TrainConfig:
    epochs: int = _f(7, ge=1, le=MAX_EPOCHS)
    batch_size: int = _f(
        16,
        ge=1,
        le=MAX_BATCH,
        doc="global batch: a multiple of num_workers, split evenly over "
        "the workers (each takes batch_size / num_workers); the lr is not rescaled",
    )
    lr: float | None = _f(None, gt=0.0, doc="null = the tune stage's value (results/tune/best.yaml); a number wins")
    weight_decay: float | None = _f(
        None, ge=0.0, doc="null = the tune stage's value (results/tune/best.yaml); a number wins"
    )
    betas: list[float] = _f([0.9, 0.999], ge=0.0, lt=1.0, doc="Adam (beta1, beta2): two numbers in [0, 1)")
    milestones: list[int] = _f([30, 40, 50, 55], ge=1, le=MAX_EPOCHS, doc="epochs at which lr is multiplied by gamma")
    schedule: str = _f(
        "cosine",
        choices=("multistep", "cosine"),
        doc="multistep (the reference: x gamma at each milestone) or cosine (to 0 at the last epoch)",
    )
    warmup_steps: int = _f(100, ge=0, le=MAX_STEPS, doc="linear lr warm-up over this many optimizer steps")
    gamma: float = _f(0.5, gt=0.0, le=1.0)
    lam: float | None = _f(
        TUNED_DEFAULTS["train.lam"], ge=0.0, doc="weight of the attention-map losses; null = the tune stage's value"
    )
    seed: int = _f(42, ge=0, le=MAX_SEED)
    sync_bn: str = _f(
        "auto",
        choices=("auto", "on", "off"),
        doc="SyncBatchNorm under DDP on GPUs: BatchNorm statistics over the global batch. auto = on when "
        "a worker holds fewer than 8 images (the reference's BatchNorm batch); CPU workers never sync",
    )
    val_every: int = _f(1, ge=1, le=MAX_EPOCHS, doc="validate every N epochs; best checkpoint by validation IoU")
    max_steps_per_epoch: int = _f(0, ge=0, le=MAX_STEPS, doc="0 = full epoch; >0 caps steps (smoke runs)")
    precision: str = _f("bf16", choices=("fp32", "bf16", "fp16"))
    channels_last: bool = _f(True)
    compile: bool = _f(False)
    checkpoint: str = _f(
        "last",
        choices=("best", "last"),
        doc="the exported model: best = highest validation IoU (the reference's rule), last = the "
        "final epoch (for a validation set too small to tell epochs apart)",
    )
    use_tune_best: bool = _f(
        True,
        doc="fill the null tuned keys (TUNED_DEFAULTS: train.lr, ...) from "
        "results/tune/best.yaml; false = ignore best.yaml, null keys take their defaults",
    )

    def __post_init__(self):
        if isinstance(self.betas, list) and len(self.betas) != 2:
            raise ConfigError(f"train.betas = {self.betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")


@dataclass
class TuneConfig:
    enabled: bool = _f(True)
    num_samples: int = _f(2, ge=1, le=100_000)
    epochs: int = _f(1, ge=1, le=MAX_EPOCHS)
    max_steps_per_epoch: int = _f(
        60, ge=0, le=MAX_STEPS, doc="cap each trial epoch at this many steps (0 = whole epochs)"
    )
    grace_period: int = _f(1, ge=1, le=MAX_EPOCHS, doc="ASHA: epochs before a trial may be stopped")
    reduction_factor: int = _f(2, ge=2, le=100)
    metric: str = _f("val_iou", choices=("val_iou", "val_f1", "val_ap", "val_loss"))
    search_space: dict = _f(
        {"lr": {"loguniform": [1e-3, 3e-3]}, "weight_decay": {"choice": [0.0, 1e-4]}},
        doc="key -> {loguniform|uniform: [lo, hi]} or {choice: [...]}; keys: those of TUNED_DEFAULTS "
        "(train.lr, train.weight_decay, train.lam), searched only where params.yaml leaves them null",
    )

    def __post_init__(self):
        if not isinstance(self.search_space, dict):
            return  # the type check reports it
        for key in self.search_space:
            full = str(key)
            if "." not in full:  # a bare key names a model field when ModelConfig has it, else a train field
                section = "model" if full in {f.name for f in dataclasses.fields(ModelConfig)} else "train"
                full = f"{section}.{full}"
            if full not in TUNED_DEFAULTS:
                raise ConfigError(
                    f"tune.search_space.{key}: {full} cannot be searched: the searchable keys are "
                    f"{', '.join(TUNED_DEFAULTS)} (a tuned key is null in params.yaml, meaning 'use the tune "
                    f"stage's value'; see TUNED_DEFAULTS in dirl/config.py)"
                )
        for full, (kind, args) in parse_search_space(self.search_space).items():
            _check_searched_values(full, kind, args)


@dataclass
class EvaluateConfig:
    split: str = _f("test", choices=("train", "val", "test"))
    extra_sets: list[str] = _f([], doc="folders in the iHarmony4 layout to evaluate as well")
    batch_size: int = _f(8, ge=1, le=MAX_BATCH)
    grid_items: int = _f(6, ge=1, le=1000)
    interpolation: str = _f(
        "auto",
        choices=("auto", "bilinear"),
        doc="resize of test images and masks to the input size: bilinear = the reference's plain "
        "bilinear resize (mask then cut at 0.5); auto = area filter when shrinking by more than 1.25x",
    )


@dataclass
class RegisterConfig:
    model_name: str = _f("dirl")
    alias: str = _f("challenger")


@dataclass
class PromoteConfig:
    metric: str = _f("IoU", choices=("AP", "F1", "IoU"))
    margin: float = _f(0.0, ge=0.0, doc="challenger must beat champion by this much")


@dataclass
class ClusterConfig:
    """Machine settings: where the stages run and how the work is spread, never what is learnt. No DVC stage
    declares this section (nor ``mlflow``), so moving from a laptop to a cluster re-runs nothing."""

    address: str = _f("", doc="empty = start Ray locally; 'auto' or 'ray://host:port' = existing cluster")
    num_cpus: int = _f(0, ge=0, le=1_000_000, doc="CPUs for a local Ray; 0 = all")
    num_workers: int = _f(1, ge=1, le=MAX_WORKERS, doc="Ray Train workers (max of the elastic range)")
    min_workers: int = _f(0, ge=0, le=MAX_WORKERS, doc="elastic minimum; 0 = fixed size num_workers")
    cpus_per_worker: float = _f(2.0, gt=0.0, le=MAX_CPUS, doc="CPUs each training worker reserves (lowered to fit)")
    placement_strategy: str = _f(
        "PACK",
        choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        doc="how Ray places the workers; STRICT_SPREAD = one worker per node",
    )
    threads_per_worker: int = _f(
        0, ge=0, le=MAX_CPUS, doc="torch threads per worker; 0 = the CPUs it reserves, at least 1"
    )
    use_gpu: bool = _f(False)
    max_failures: int = _f(2, ge=-1, le=1000, doc="worker-group restarts before the run fails (-1 = forever)")
    storage_path: str = _f(
        "",
        doc="absolute path or URI for Ray checkpoints; empty = $DIRL_STORAGE_PATH, "
        "else <state root>/ray_results (dirl/workspace.py)",
    )
    max_concurrent_trials: int = _f(1, ge=1, le=MAX_WORKERS, doc="tune trials at once (lowered to fit the cluster)")
    data_workers: int = _f(0, ge=0, le=MAX_CPUS, doc="processes of the data stages; 0 = number of CPU cores")
    data_engine: str = _f(
        "auto",
        choices=("auto", "local", "ray"),
        doc="where preprocess and synthesize run: local processes, Ray tasks across the cluster's "
        "nodes (same rows, byte for byte), or auto = ray when cluster.address is set",
    )

    def __post_init__(self):
        if self.min_workers > self.num_workers:
            raise ConfigError(
                f"cluster.min_workers = {self.min_workers} is above cluster.num_workers = "
                f"{self.num_workers}: the elastic range is min_workers..num_workers"
            )


MACHINE_SECTIONS = ("cluster", "mlflow")  # where a stage runs and records: not DVC params of any stage
# Keys that moved to another section: an old params file gets a one-line fix instead of "unknown key".
MOVED = {
    f"train.{k}": f"cluster.{k}"
    for k in (
        "num_workers",
        "min_workers",
        "cpus_per_worker",
        "placement_strategy",
        "threads_per_worker",
        "use_gpu",
        "max_failures",
        "storage_path",
    )
}
MOVED.update({"tune.max_concurrent": "cluster.max_concurrent_trials", "data.workers": "cluster.data_workers"})


@dataclass
class MlflowConfig:
    tracking_uri: str = _f(
        "", doc="empty = $MLFLOW_TRACKING_URI, else sqlite:///<state root>/mlflow.db (dirl/workspace.py)"
    )
    experiment: str = _f("dirl")

    def __post_init__(self):
        uri = self.tracking_uri
        if not isinstance(uri, str) or not uri:
            return
        scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else uri  # postgresql+psycopg2: ok
        if scheme not in TRACKING_SCHEMES:
            what = f"an unknown scheme {scheme!r}" if ":" in uri else "no scheme"
            raise ConfigError(
                f'mlflow.tracking_uri = {uri!r} has {what}: expected "" (the default store) or a '
                f"URI starting with {', '.join(s + ':' for s in TRACKING_SCHEMES)} (a local folder is "
                f"file:///abs/path)"
            )


@dataclass
class Config:
    data: DataConfig = _f(DataConfig)
    synth: SynthConfig = _f(SynthConfig)
    model: ModelConfig = _f(ModelConfig)
    train: TrainConfig = _f(TrainConfig)
    tune: TuneConfig = _f(TuneConfig)
    evaluate: EvaluateConfig = _f(EvaluateConfig)
    register: RegisterConfig = _f(RegisterConfig)
    promote: PromoteConfig = _f(PromoteConfig)
    cluster: ClusterConfig = _f(ClusterConfig)
    mlflow: MlflowConfig = _f(MlflowConfig)

    def __post_init__(self):
        if isinstance(self.train, Undeclared) or isinstance(self.train.batch_size, Undeclared):
            return  # a stage that does not read train.batch_size (restrict)
        if self.train.batch_size % self.cluster.num_workers:
            raise ConfigError(
                f"train.batch_size = {self.train.batch_size} is the global batch and must be a multiple "
                f"of cluster.num_workers = {self.cluster.num_workers} (each worker takes batch_size / "
                f"num_workers)"
            )

    def to_dict(self) -> dict:
        """Every value as nested dicts; a stage's config (:func:`restrict`) leaves out what it may not read and says
        so under ``UNDECLARED``, so that :func:`config_from_dict` restricts the copy alike (a Ray worker's)."""
        data = dataclasses.asdict(self)
        hidden = [k for k in _undeclared_keys(self)]
        if not hidden:
            return data
        for key in hidden:
            section, _, name = key.partition(".")
            if name:
                data[section].pop(name)
            else:
                data.pop(section)
        data[UNDECLARED] = {"stage": _undeclared_stage(self), "keys": hidden}
        return data


# ----------------------------------------------------------------------------- what a stage may read

UNDECLARED = "__undeclared__"


class Undeclared:
    """The value of a param that a stage did not declare (:func:`restrict`): any use raises ConfigError naming the
    key and the line to add, so a stage cannot depend on a param that dvc.yaml does not list for it."""

    def __init__(self, key: str, stage: str):
        self.key, self.stage = key, stage

    def _fail(self, *args, **kwargs):
        raise ConfigError(
            f"stage {self.stage} reads {self.key}, which it does not declare: add {self.key!r} to PARAMS "
            f"in dirl/stages/{self.stage}.py, then `python pipeline/dvcyaml.py --write` (dvc.yaml)"
        )

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        self._fail()

    def __deepcopy__(self, memo):
        return self  # dataclasses.asdict copies it; Config.to_dict then leaves it out

    __bool__ = __str__ = __format__ = __iter__ = __len__ = __eq__ = __hash__ = __lt__ = __gt__ = __le__ = __ge__ = _fail
    __add__ = __sub__ = __mul__ = __truediv__ = __mod__ = __contains__ = __getitem__ = __float__ = __int__ = _fail

    def __repr__(self) -> str:
        return f"<undeclared {self.key} in stage {self.stage}>"


def _undeclared_keys(cfg: Config) -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if isinstance(section, Undeclared):
            out.append(f.name)
        elif dataclasses.is_dataclass(section):
            out += [
                f"{f.name}.{g.name}"
                for g in dataclasses.fields(section)
                if isinstance(getattr(section, g.name), Undeclared)
            ]
    return out


def _undeclared_stage(cfg: Config) -> str:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Undeclared):
            return v.stage
        for g in dataclasses.fields(v) if dataclasses.is_dataclass(v) else ():
            if isinstance(getattr(v, g.name), Undeclared):
                return getattr(v, g.name).stage
    return ""


def restrict(cfg: Config, params: Sequence[str], stage: str) -> Config:
    """A copy of ``cfg`` in which only ``params`` (sections, or ``section.key``) and the machine sections can be read:
    every other param becomes :class:`Undeclared`. What a stage declares is what dvc.yaml lists as its params."""
    allowed = set(params)
    for p in allowed:
        section, _, name = p.partition(".")
        if section not in SECTIONS or (
            name and name not in {f.name for f in dataclasses.fields(getattr(cfg, section))}
        ):
            raise ConfigError(f"dirl/stages/{stage}.py: PARAMS names {p!r}, which is not a params.yaml key")
    out = copy.copy(cfg)
    for section in SECTIONS:
        if section in allowed or section in MACHINE_SECTIONS:
            continue
        keys = {p.split(".", 1)[1] for p in allowed if p.startswith(section + ".")}
        if not keys:
            object.__setattr__(out, section, Undeclared(section, stage))
            continue
        part = copy.copy(getattr(cfg, section))
        for f in dataclasses.fields(part):
            if f.name not in keys:
                object.__setattr__(part, f.name, Undeclared(f"{section}.{f.name}", stage))
        object.__setattr__(out, section, part)
    return out


# ----------------------------------------------------------------------------- tune search space

KINDS = ("loguniform", "uniform", "randint", "choice", "grid")
NOT_SEARCHABLE = {
    "train.epochs": "every trial trains tune.epochs epochs",
    "train.use_tune_best": "trials never read best.yaml",
    "train.val_every": "trials validate after every epoch",
}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def canonical_key(key: str, where: str = "tune.search_space") -> str:
    """``lr`` -> ``train.lr``, ``input_size`` -> ``model.input_size``, ``model.name`` stays; else ConfigError."""
    key = str(key)
    if "." in key:
        section, name = key.split(".", 1)
        fields = {"train": TRAIN_FIELDS, "model": MODEL_FIELDS}.get(section)
        if fields is None or name not in fields:
            raise ConfigError(
                f"{where}.{key}: unknown key: use train.<field> or model.<field> "
                f"(train fields: {', '.join(sorted(TRAIN_FIELDS))}; "
                f"model fields: {', '.join(sorted(MODEL_FIELDS))})"
            )
        full = key
    elif key in MODEL_FIELDS:
        full = f"model.{key}"
    elif key in TRAIN_FIELDS:
        full = f"train.{key}"
    else:
        raise ConfigError(
            f"{where}.{key}: unknown key: a bare key must be a train field "
            f"({', '.join(sorted(TRAIN_FIELDS))}) or a model field ({', '.join(sorted(MODEL_FIELDS))})"
        )
    if full in NOT_SEARCHABLE:
        raise ConfigError(f"{where}.{key}: {full} cannot be searched ({NOT_SEARCHABLE[full]})")
    return full


def _number(v: Any) -> bool:
    if isinstance(v, str):  # PyYAML reads 3e-5 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            return False
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_search_space(space: dict, where: str = "tune.search_space") -> dict[str, tuple[str, list]]:
    """Validate ``tune.search_space``; return ``{canonical key: (kind, args)}``.

    Raises :class:`ConfigError` naming the key and the accepted forms for a malformed entry.
    """
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            f"{where} must be a non-empty mapping of key -> {{kind: args}} (kinds: {', '.join(KINDS)}), got {space!r}"
        )
    forms = (
        "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {randint: [lo, hi]} (hi excluded), "
        "{choice: [v1, v2, ...]} or {grid: [v1, v2, ...]}"
    )
    parsed: dict[str, tuple[str, list]] = {}
    for key, spec in space.items():
        full = canonical_key(key, where)
        if full in parsed:
            raise ConfigError(f"{where}.{key}: {full} is given twice (as a bare and a dotted key)")
        bad = ConfigError(f"{where}.{key} = {spec!r} is not a valid search space: expected {forms}")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise bad
        ((kind, args),) = spec.items()
        if kind not in KINDS or not isinstance(args, (list, tuple)) or not args:
            raise bad
        args = list(args)
        if kind in ("loguniform", "uniform", "randint"):
            if len(args) != 2 or not all(_number(a) for a in args):
                raise bad
            lo, hi = (float(a) for a in args) if kind != "randint" else args
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError(f"{where}.{key} = {spec!r}: randint bounds must be integers")
            if not lo < hi:
                raise ConfigError(f"{where}.{key} = {spec!r}: the lower bound must be below the upper bound")
            if kind == "loguniform" and lo <= 0:
                raise ConfigError(f"{where}.{key} = {spec!r}: loguniform bounds must be > 0")
            args = [lo, hi]
        parsed[full] = (kind, args)
    return parsed


def _check_searched_values(full: str, kind: str, args: list, where: str = "tune.search_space") -> None:
    """Every value a search may draw for ``full`` must be a valid value of that key (type and range)."""
    section, name = full.split(".", 1)
    cls = {"train": TrainConfig, "model": ModelConfig}[section]
    fld = {f.name: f for f in dataclasses.fields(cls)}[name]
    tp = typing.get_type_hints(cls)[name]
    for i, v in enumerate(args):
        at = f"{where}.{name}.{kind}[{i}]"
        _check_range(_coerce(v, tp, at, ""), fld.metadata, at, "")


# ----------------------------------------------------------------------------- validation


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp, where: str, src: str):
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    at = f"{src}: {where}" if src else where
    bad = ConfigError(f"{at} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, where, src)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where, src)
            except _NotFinite:
                raise
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise bad
        if not math.isfinite(number):
            raise _NotFinite(f"{at} = {value!r} is not a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _check_range(value, meta: Mapping, where: str, src: str):
    at = f"{src}: {where}" if src else where
    checks = [
        ("gt", lambda v, b: v > b, ">"),
        ("ge", lambda v, b: v >= b, ">="),
        ("lt", lambda v, b: v < b, "<"),
        ("le", lambda v, b: v <= b, "<="),
    ]
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for key, ok, _sym in checks:
                bound = meta.get(key)
                if bound is not None and not ok(v, bound):
                    allowed = " and ".join(f"{s} {meta[k]}" for k, _, s in checks if meta.get(k) is not None)
                    raise ConfigError(f"{at} = {value!r} is out of range: expected a number {allowed}")
        choices = meta.get("choices")
        if choices and v not in choices:
            raise ConfigError(f"{at} = {v!r} is not allowed: expected one of {', '.join(map(repr, choices))}")


def _build(cls, data: dict, prefix: str, src: str):
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        if key in MOVED:
            raise ConfigError(
                f"{src}: '{key}' has moved to '{MOVED[key]}' (machine settings live in the cluster "
                f"section): move it there"
            )
        raise ConfigError(f"{src}: unknown key '{key}': allowed keys here are {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        where = f"{prefix}.{name}" if prefix else name
        coerced = _coerce(value, hints[name], where, src)
        _check_range(coerced, names[name].metadata, where, src)
        kwargs[name] = coerced
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from None


def config_from_dict(data: dict | None, src: str = "<dict>") -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) nested mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: the top level must be a mapping of sections, got {type(data).__name__}")
    hidden = data.get(UNDECLARED)
    if hidden:  # a stage's config (Config.to_dict): restricted alike, never filled with defaults
        data = {k: v for k, v in data.items() if k != UNDECLARED}
        cfg = _build(Config, data, "", src)
        keys = set(hidden["keys"])
        params = [
            f"{s}.{f.name}"
            for s in SECTIONS
            if s not in MACHINE_SECTIONS and s not in keys
            for f in dataclasses.fields(getattr(cfg, s))
            if f"{s}.{f.name}" not in keys
        ]
        return restrict(cfg, params, hidden["stage"])
    return _build(Config, data, "", src)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping holding the same key twice (PyYAML keeps the last one silently)."""

    def construct_document(self, node):
        _no_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _no_duplicate_keys(node, prefix: str, seen_nodes: set) -> None:
    if id(node) in seen_nodes:  # an alias of a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in first:
                    raise ConfigError(
                        f"duplicate key '{where}' at line {line} (first at line {first[key]}): "
                        f"YAML would keep only the last value; remove one"
                    )
                first[key] = line
            _no_duplicate_keys(value_node, where, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, f"{prefix}[{i}]", seen_nodes)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _read_yaml(path: Path) -> Any:
    """A YAML file's data; ConfigError (one line: file, line, what the parser expected) when it cannot be read."""
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the project root or pass --params)")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:  # one line: where, and what the parser expected
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None


PROFILES_DIR = Path(__file__).resolve().parents[1] / "params"  # the profiles of a source checkout


def profile_path(profile: str | os.PathLike) -> Path:
    """``smoke`` -> ``params/smoke.yaml`` of the project; a path is taken as it is."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        return p
    from dirl.workspace import root

    where = root() / "params"
    found = where / f"{profile}.yaml"
    if not found.is_file():
        where = PROFILES_DIR
        found = where / f"{profile}.yaml"
    if not found.is_file():
        names = sorted(q.stem for q in where.glob("*.yaml"))
        raise ConfigError(f"profile {profile!r} not found: expected {found} (profiles: {', '.join(names)})")
    return found


def profile_overrides(profile: str | os.PathLike) -> dict[str, Any]:
    """A profile (``params/<name>.yaml``: only the keys that differ from params.yaml) as dotted overrides."""
    path = profile_path(profile)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a profile is a mapping of sections holding only the keys it changes")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            # a nested mapping is walked, except the values that are mappings themselves (a search space)
            if isinstance(value, dict) and name not in ("tune.search_space",):
                walk(value, name)
            else:
                flat[name] = value

    walk(data, "")
    return flat


def load_config(
    path: str | os.PathLike = "params.yaml", overrides: dict | None = None, profile: str | os.PathLike | None = None
) -> Config:
    """Load ``params.yaml``, then a ``profile`` overlay (:func:`profile_overrides`), then dotted ``overrides``,
    into a validated :class:`Config`.

    A params file must hold every section (``SECTIONS``): a missing one would silently take the code defaults.
    A key given twice is refused (YAML would keep the last one).
    """
    path = Path(path)
    data = _read_yaml(path)
    if data is None:
        raise ConfigError(
            f"{path}: the file is empty: a params file must hold every section "
            f"({', '.join(SECTIONS)}); copy params.yaml or a profile from params/"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    missing = [s for s in SECTIONS if s not in data]
    if missing:
        raise ConfigError(
            f"{path}: missing section(s) {', '.join(missing)}: a params file must hold every section "
            f"({', '.join(SECTIONS)}); a missing one would silently take the code defaults"
        )
    src = str(path)
    if profile is not None:
        src = f"{path} + {profile_path(profile)}"
        for key, value in profile_overrides(profile).items():
            _set_known(data, key, value, str(profile_path(profile)))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, src)


def _set_known(data: dict, key: str, value: Any, src: str) -> None:
    """``set_dotted`` for an overlay: the key must exist in the base (a typo would add a section or key)."""
    node = data
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            break
        node = node[p]
    else:
        if parts[-1] in node:
            node[parts[-1]] = value
            return
    hint = f" (moved to '{MOVED[key]}')" if key in MOVED else ""
    raise ConfigError(f"{src}: unknown key '{key}'{hint}: a profile may only change keys of params.yaml")


def write_profile(params: str | os.PathLike, profile: str | os.PathLike) -> dict[str, tuple[Any, Any]]:
    """Apply a profile to the params file in place, keeping its comments and layout (ruamel round trip);
    validated first. Returns ``{key: (old, new)}`` of the values that changed."""
    from ruamel.yaml import YAML

    params = Path(params)
    load_config(params, profile=profile)  # refuses a bad profile before anything is written
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(params.read_text())
    changed: dict[str, tuple[Any, Any]] = {}
    for key, value in profile_overrides(profile).items():
        node = doc
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        if old != value:  # written as PyYAML writes it (3.0e-05, not 3e-05, which PyYAML reads as a string)
            node[leaf] = rt.load(yaml.safe_dump({"v": value}, default_flow_style=True, width=4096))["v"]
            changed[key] = (old, value)
    import io as _io

    from dirl.io import write_text_atomic

    buf = _io.StringIO()
    rt.dump(doc, buf)
    write_text_atomic(params, buf.getvalue())
    return changed


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-3)`` sets ``d["train"]["lr"]``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with a YAML value (``train.lr=3e-4``, ``tune.enabled=false``)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def save_resolved(cfg: Config | dict, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config beside an output (atomically) and return its path."""
    from dirl.io import write_text_atomic

    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    return write_text_atomic(Path(out_dir) / name, yaml.safe_dump(data, sort_keys=False))
