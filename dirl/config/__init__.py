"""Typed configuration: one dataclass per ``params.yaml`` section, validated on load.

``load_config("params.yaml")`` returns a :class:`Config`. Every value is checked against its declared type and
range; an unknown key, a wrong type, an out-of-range or non-finite value, a key given twice, a missing section (a
params file holds them all) or an inconsistent pair (``cluster.min_workers`` above ``cluster.num_workers``, a
``train.batch_size`` that does not split over the workers) raises :class:`ConfigError` whose message names the
file, the dotted key and the allowed values, e.g.::

    params.yaml: train.lr = -1.0 is out of range: expected a number > 0.0

sections.py  the sections and their fields: defaults, bounds, allowed values, help (start here)
fields.py    the validation engine that reads those declarations
load.py      params.yaml, profiles and ``--set`` overrides -> Config; write_profile, save_resolved
restrict.py  what a stage may read (its PARAMS, as dvc.yaml lists them)

The tune search space (``tune.search_space``) is checked by the training package, ``dirl/train/search_space.py``.
Stages read only their own sections (``cfg.train``, ``cfg.data`` ...); :func:`save_resolved` writes the resolved
config next to an output so that every result carries the exact settings that produced it.
"""

from dirl.config.fields import ConfigError, check_field
from dirl.config.load import (
    PROFILES_DIR,
    config_from_dict,
    load_config,
    params_source,
    parse_override,
    profile_overrides,
    profile_path,
    save_resolved,
    set_dotted,
    write_profile,
)
from dirl.config.restrict import MACHINE_SECTIONS, UNDECLARED, Undeclared, restrict
from dirl.config.sections import (
    MAX_BATCH,
    MAX_CPUS,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_STEPS,
    MAX_WORKERS,
    MODEL_NAMES,
    MOVED,
    SECTIONS,
    SYNTH_METHODS,
    TRACKING_SCHEMES,
    TUNED_DEFAULTS,
    ClusterConfig,
    Config,
    DataConfig,
    EvaluateConfig,
    IHarmony4Config,
    MlflowConfig,
    ModelConfig,
    PromoteConfig,
    RegisterConfig,
    SynthConfig,
    TrainConfig,
    TuneConfig,
)

__all__ = [
    "ConfigError",
    "check_field",
    "PROFILES_DIR",
    "config_from_dict",
    "load_config",
    "params_source",
    "parse_override",
    "profile_overrides",
    "profile_path",
    "save_resolved",
    "set_dotted",
    "write_profile",
    "MACHINE_SECTIONS",
    "UNDECLARED",
    "Undeclared",
    "restrict",
    "MAX_BATCH",
    "MAX_CPUS",
    "MAX_EPOCHS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_WORKERS",
    "MODEL_NAMES",
    "MOVED",
    "SECTIONS",
    "SYNTH_METHODS",
    "TRACKING_SCHEMES",
    "TUNED_DEFAULTS",
    "ClusterConfig",
    "Config",
    "DataConfig",
    "EvaluateConfig",
    "IHarmony4Config",
    "MlflowConfig",
    "ModelConfig",
    "PromoteConfig",
    "RegisterConfig",
    "SynthConfig",
    "TrainConfig",
    "TuneConfig",
]
