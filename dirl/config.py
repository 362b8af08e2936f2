"""Typed configuration: one dataclass per ``params.yaml`` section, validated on load.

``load_config("params.yaml")`` returns a :class:`Config`. Every value is checked against its
declared type and range; an unknown key, a wrong type or an out-of-range value raises
:class:`ConfigError` whose message names the file, the dotted key and the allowed values, e.g.::

    params.yaml: train.lr = -1.0 is out of range: expected a number > 0

Stages read only their own sections (``cfg.train``, ``cfg.data`` ...), which is what ``dvc.yaml``
declares as each stage's ``params`` dependency. :func:`save_resolved` writes the resolved config next
to an output so that every result carries the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

MODEL_NAMES = ("dirl", "dirl_lite", "dirl_tiny", "unet", "deeplabv3")
SYNTH_METHODS = ("reinhard", "xiao", "fecker", "idt", "lighting", "lut")


class ConfigError(ValueError):
    """A params.yaml problem; the message names the file, the key and what is allowed."""


# The keys the tune stage may search, with what a null falls back to. In params.yaml such a key is null
# ("use the tune stage's value", read from results/tune/best.yaml by dirl.train.trainer.resolve_tuned) or a
# number, which wins: an explicit value is neither searched nor replaced. A null key takes the number here
# when tune is disabled, train.use_tune_best is false or best.yaml has no value for it. To make another
# train key searchable, add it here and let its TrainConfig field be ``<type> | None``.
TUNED_DEFAULTS: dict[str, float] = {"train.lr": 1e-4, "train.weight_decay": 1e-4, "train.lam": 1.0}


def _f(default: Any = dataclasses.MISSING, *, gt=None, ge=None, le=None, lt=None, choices=None, doc="", **kw):
    """A dataclass field with validation metadata (bounds, allowed values, help text)."""
    meta = {"gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
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
    stored_size: int = _f(256, ge=32, le=4096, doc="side of the square images stored in the shards")
    test_fraction: float = _f(0.2, ge=0.0, lt=1.0, doc="held-out photos for sample/photos sources")
    val_fraction: float = _f(0.1, ge=0.0, lt=1.0, doc="part of train held out for validation")
    max_bad_fraction: float = _f(0.05, ge=0.0, le=1.0, doc="a stage fails only above this fraction of bad items")
    workers: int = _f(0, ge=0, doc="processes; 0 = number of CPU cores")
    seed: int = _f(42)


@dataclass
class SynthConfig:
    methods: list[str] = _f(list(SYNTH_METHODS), choices=SYNTH_METHODS)
    per_image: int = _f(4, ge=1, le=1000, doc="accepted composites per real image")
    max_tries: int = _f(20, ge=1)
    recolour: float = _f(0.0, ge=0.0, le=1.0, doc="probability that a composite starts from the photo globally "
                         "recoloured by a random LUT (no colour stays specific to one photo)")
    free_form: int = _f(0, ge=0, le=1000, doc="extra composites per real image whose region is a random free-form "
                        "blob instead of the object mask")
    augment_iharmony4: bool = _f(False, doc="also synthesize from iHarmony4 real images + masks")
    seed: int = _f(0)


@dataclass
class ModelConfig:
    name: str = _f("dirl_lite", choices=MODEL_NAMES)
    input_size: int = _f(128, ge=32, le=2048, doc="multiple of 16; reference 224, MadisNet 256")
    pretrained: str = _f("", doc="torchvision-format resnet34 state dict (path or URL); empty = random init")
    pretrained_sha256: str = _f("")

    def __post_init__(self):
        if self.input_size % 16:
            raise ConfigError(f"model.input_size = {self.input_size} must be a multiple of 16")
        if self.name == "dirl_tiny" and self.input_size % 32:
            raise ConfigError(f"model.input_size = {self.input_size} must be a multiple of 32 for dirl_tiny "
                              f"(its fifth stage sits at 1/32 of the input)")


@dataclass
class TrainConfig:
    epochs: int = _f(60, ge=1)
    batch_size: int = _f(8, ge=1, doc="global batch: split evenly over the workers (each takes batch_size / "
                         "num_workers); the lr is not rescaled")
    lr: float | None = _f(TUNED_DEFAULTS["train.lr"], gt=0.0,
                          doc="null = the tune stage's value (results/tune/best.yaml); a number wins")
    weight_decay: float | None = _f(TUNED_DEFAULTS["train.weight_decay"], ge=0.0,
                                    doc="null = the tune stage's value (results/tune/best.yaml); a number wins")
    betas: list[float] = _f([0.9, 0.999])
    milestones: list[int] = _f([30, 40, 50, 55], doc="epochs at which lr is multiplied by gamma")
    schedule: str = _f("multistep", choices=("multistep", "cosine"),
                       doc="multistep (the reference: x gamma at each milestone) or cosine (to 0 at the last epoch)")
    warmup_steps: int = _f(0, ge=0, doc="linear lr warm-up over this many optimizer steps")
    gamma: float = _f(0.5, gt=0.0, le=1.0)
    lam: float | None = _f(TUNED_DEFAULTS["train.lam"], ge=0.0,
                           doc="weight of the attention-map losses; null = the tune stage's value")
    seed: int = _f(42)
    val_every: int = _f(1, ge=1, doc="validate every N epochs; best checkpoint by validation IoU")
    max_steps_per_epoch: int = _f(0, ge=0, doc="0 = full epoch; >0 caps steps (smoke runs)")
    num_workers: int = _f(1, ge=1, doc="Ray Train workers (max of the elastic range)")
    min_workers: int = _f(0, ge=0, doc="elastic minimum; 0 = fixed size num_workers")
    cpus_per_worker: float = _f(0.5, gt=0.0, doc="leave CPU for Ray Data on small machines")
    placement_strategy: str = _f("PACK", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                                 doc="how Ray places the workers; STRICT_SPREAD = one worker per node")
    threads_per_worker: int = _f(0, ge=0, doc="torch threads per worker; 0 = the CPUs it reserves, at least 1")
    use_gpu: bool = _f(False)
    max_failures: int = _f(2, ge=-1, doc="worker-group restarts before the run fails (-1 = forever)")
    storage_path: str = _f("", doc="absolute path or URI for Ray checkpoints; empty = $DIRL_STORAGE_PATH, "
                           "else <workspace>/ray_results")
    precision: str = _f("fp32", choices=("fp32", "bf16", "fp16"))
    channels_last: bool = _f(False)
    compile: bool = _f(False)
    use_tune_best: bool = _f(True, doc="fill the null tuned keys (TUNED_DEFAULTS: train.lr, ...) from "
                             "results/tune/best.yaml; false = ignore best.yaml, null keys take their defaults")


@dataclass
class TuneConfig:
    enabled: bool = _f(True)
    num_samples: int = _f(4, ge=1)
    max_concurrent: int = _f(1, ge=1, doc="1 on 2-CPU machines (trials deadlock otherwise)")
    epochs: int = _f(2, ge=1)
    grace_period: int = _f(1, ge=1, doc="ASHA: epochs before a trial may be stopped")
    reduction_factor: int = _f(2, ge=2)
    metric: str = _f("val_iou", choices=("val_iou", "val_f1", "val_ap", "val_loss"))
    search_space: dict = _f(
        {"lr": {"loguniform": [3e-5, 3e-4]}, "weight_decay": {"choice": [0.0, 1e-4]}},
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
                    f"stage's value'; see TUNED_DEFAULTS in dirl/config.py)")


@dataclass
class EvaluateConfig:
    split: str = _f("test", choices=("train", "val", "test"))
    extra_sets: list[str] = _f([], doc="folders in the iHarmony4 layout to evaluate as well")
    batch_size: int = _f(8, ge=1)
    grid_items: int = _f(6, ge=1)


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
    address: str = _f("", doc="empty = start Ray locally; 'auto' or 'ray://host:port' = existing cluster")
    num_cpus: int = _f(0, ge=0, doc="CPUs for a local Ray; 0 = all")


@dataclass
class MlflowConfig:
    tracking_uri: str = _f("", doc="empty = $MLFLOW_TRACKING_URI, else sqlite:///<workspace>/mlflow.db")
    experiment: str = _f("dirl")


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    bad = ConfigError(f"{src}: {where} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, where, src)
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where, src)
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def _check_range(value, meta: dict, where: str, src: str):
    checks = [("gt", lambda v, b: v > b, ">"), ("ge", lambda v, b: v >= b, ">="),
              ("lt", lambda v, b: v < b, "<"), ("le", lambda v, b: v <= b, "<=")]
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            for key, ok, sym in checks:
                bound = meta.get(key)
                if bound is not None and not ok(v, bound):
                    allowed = " and ".join(f"{s} {meta[k]}" for k, _, s in checks if meta.get(k) is not None)
                    raise ConfigError(f"{src}: {where} = {value!r} is out of range: expected a number {allowed}")
        choices = meta.get("choices")
        if choices and v not in choices:
            raise ConfigError(
                f"{src}: {where} = {v!r} is not allowed: expected one of {', '.join(map(repr, choices))}"
            )


def _build(cls, data: dict, prefix: str, src: str):
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
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
    return _build(Config, data, "", src)


def load_config(path: str | os.PathLike = "params.yaml", overrides: dict | None = None) -> Config:
    """Load ``params.yaml`` (plus optional dotted ``overrides``) into a validated :class:`Config`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (run from the project root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(data, str(path))


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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    target = out / name
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, target)
    return target


def workspace_root(start: str | os.PathLike | None = None) -> Path:
    """The project workspace: the nearest parent holding params.yaml (else the current directory)."""
    here = Path(start or os.getcwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists():
            return p
    return here


def tracking_uri(cfg: Config, root: str | os.PathLike | None = None) -> str:
    """The MLflow tracking URI: the configured one, or an absolute SQLite store in the workspace."""
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(root) if root else workspace_root()).resolve() / 'mlflow.db'}"
