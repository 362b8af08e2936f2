"""The ``params.yaml`` sections: one dataclass per section, each field with its default, its bounds and allowed
values (:func:`~dirl.config.fields._f`) and a line of help; ``__post_init__`` checks what spans several fields.
``params.yaml`` holds the same defaults (a test keeps the two equal)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dirl.config.fields import ConfigError, _f
from dirl.config.restrict import UNDECLARED, Undeclared, undeclared_keys, undeclared_stage

MODEL_NAMES = ("dirl", "dirl_lite", "dirl_tiny", "dirl_tiny_deep", "unet", "deeplabv3")
SYNTH_METHODS = ("reinhard", "xiao", "fecker", "idt", "lighting", "lut")


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
    max_border: float = _f(
        1.0,
        ge=0.0,
        le=1.0,
        doc="iharmony4-like: the largest fraction of a crop's edge its region may cover (1 = any; a photo whose "
        "region covers more at every crop is skipped); reference: ihd_dev, mean 0.04, 89 % at most 0.1",
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
    foreign_shapes: int = _f(
        0,
        ge=0,
        le=1000,
        doc="iharmony4-like: extra composites per photo whose region is another photo's object outline, scaled to "
        "target_area and placed at target_centre: no object of the photo, only its mismatch marks it (0 = none; "
        "photos skipped by max_border get them too)",
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
        if self.name in ("dirl_tiny", "dirl_tiny_deep") and self.input_size % 32:
            raise ConfigError(
                f"model.input_size = {self.input_size} must be a multiple of 32 for {self.name} "
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
    jitter: float = _f(
        0.0,
        ge=0.0,
        le=0.5,
        doc="global photometric jitter of train crops (0 = none, the reference): gamma, contrast, brightness and "
        "per-channel gain, each up to this log-strength, applied to the whole image so the region's mismatch stays",
    )
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
        "(train.lr, train.weight_decay, train.lam), searched only where params.yaml leaves them null. Checked "
        "by the tune stage and `dirl config` (dirl/train/search_space.py); here only that it is a mapping",
    )


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
        hidden = undeclared_keys(self)
        if not hidden:
            return data
        for key in hidden:
            section, _, name = key.partition(".")
            if name:
                data[section].pop(name)
            else:
                data.pop(section)
        data[UNDECLARED] = {"stage": undeclared_stage(self), "keys": hidden}
        return data


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
