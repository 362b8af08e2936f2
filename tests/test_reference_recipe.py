"""The `iharmony4-reference` profile is the reference implementation's recipe, value for value.

REFERENCE is copied from the reference's specification (DIRL.md: "Training recipe of the reference", "Evaluation",
"Loss"); the test resolves the profile as a user would (params.yaml + params/iharmony4-reference.yaml) and compares
every entry. `iharmony4-search` must differ from it only where it says it goes beyond the recipe.
"""

from __future__ import annotations

import math

import pytest

from dirl import losses, metrics
from dirl.config import load_config
from dirl.data import transforms
from dirl.summary import recipe_sentence
from helpers.paths import PARAMS, ROOT

# dotted config key -> the reference's value
REFERENCE = {
    "data.source": "iharmony4",
    "data.iharmony4.split": "le50",  # DIRL's le50 lists (foreground <= 50 %)
    "data.val_fraction": 0.1,  # best checkpoint by validation IoU on 10 % of train
    "data.keep_aspect": True,  # random resized crop taken from the full image, not a squashed one
    "synth.augment_iharmony4": False,  # trained on iHarmony4's composites only
    "model.name": "dirl",
    "model.input_size": 224,
    "model.pretrained": "data/weights/resnet34-b627a593.pth",  # torchvision's resnet34(pretrained=True)
    "train.epochs": 60,
    "train.batch_size": 8,
    "train.lr": 1e-4,
    "train.betas": [0.9, 0.999],
    "train.weight_decay": 1e-4,  # L2 (coupled) in Adam
    "train.lam": 1.0,
    "train.schedule": "multistep",
    "train.milestones": [30, 40, 50, 55],
    "train.gamma": 0.5,
    "train.warmup_steps": 0,
    "train.seed": 42,
    "train.precision": "fp32",
    "train.checkpoint": "best",
    "train.use_tune_best": False,
    "tune.enabled": False,  # no search
    "evaluate.interpolation": "bilinear",  # plain resize to 224, mask bilinear then cut at 0.5
}

# constants of the code the recipe runs through (train crop, loss, evaluation)
REFERENCE_CODE = {
    (transforms, "SCALE"): (0.9, 1.0),
    (transforms, "RATIO"): (3 / 4, 4 / 3),
    (transforms, "MIN_FG_PIXELS"): 10,
    (transforms, "ACCEPT_EMPTY_P"): 0.05,
    (losses, "SSIM_WINDOW"): 11,
    (losses, "SSIM_SIGMA"): 1.5,
    (losses, "SSIM_C1"): 0.01**2,
    (losses, "SSIM_C2"): 0.03**2,
    (metrics, "THRESHOLD"): 0.5,
    (metrics, "NORM_EPS"): 1e-2,
}

# what iharmony4-search changes on purpose (everything else is the reference's)
SEARCH_CHANGES = {
    "synth.augment_iharmony4",
    "train.lr",
    "train.weight_decay",
    "train.lam",
    "train.precision",
    "train.channels_last",
    "train.use_tune_best",
    "tune.enabled",
    "tune.num_samples",
    "tune.epochs",
    "tune.grace_period",
    "tune.max_steps_per_epoch",
    "tune.search_space",
    "synth.per_image",
    "synth.recolour",
    "cluster.max_concurrent_trials",
}


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "search_space":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.fixture(scope="module")
def reference():
    return load_config(PARAMS, profile=ROOT / "params" / "iharmony4-reference.yaml")


@pytest.mark.parametrize("key", sorted(REFERENCE))
def test_reference_profile_value(reference, key):
    got, want = _get(reference, key), REFERENCE[key]
    if isinstance(want, float):
        assert isinstance(got, float) and math.isclose(got, want), f"{key} = {got!r}, the reference: {want!r}"
    else:
        assert got == want, f"{key} = {got!r}, the reference: {want!r}"


@pytest.mark.parametrize(
    "where",
    sorted(REFERENCE_CODE, key=lambda w: (w[0].__name__, w[1])),
    ids=lambda w: f"{w[0].__name__.split('.')[-1]}.{w[1]}",
)
def test_reference_code_constant(where):
    module, name = where
    assert getattr(module, name) == pytest.approx(REFERENCE_CODE[where])


def test_reference_backbone_hash_is_torchvisions(reference):
    from dirl.models.resnet import TORCHVISION_RESNET34_SHA256, TORCHVISION_RESNET34_URL

    assert reference.model.pretrained_sha256 == TORCHVISION_RESNET34_SHA256
    assert TORCHVISION_RESNET34_URL.rsplit("/", 1)[-1] == reference.model.pretrained.rsplit("/", 1)[-1]
    assert TORCHVISION_RESNET34_SHA256.startswith("b627a593")  # torchvision names the file by its hash's start


def test_reference_batchnorm_sees_eight_images_on_gpu_workers(reference):
    """The reference normalises over 8 images on one GPU; with the profile's workers each holds fewer, so
    BatchNorm syncs (train.sync_bn auto) and the global batch of 8 is what BatchNorm sees."""
    from dirl.train.worker import use_sync_bn

    world = reference.cluster.num_workers
    local = reference.train.batch_size // world
    assert local < 8
    sync, note = use_sync_bn(reference.train.sync_bn, world, local, "cuda")
    assert sync and f"global batch of {local * world}" in note and local * world == 8
    assert use_sync_bn(reference.train.sync_bn, 1, 8, "cuda") == (False, None)  # one GPU of 8: nothing to sync


def test_search_profile_differs_only_beyond_the_recipe(reference):
    search = load_config(PARAMS, profile=ROOT / "params" / "iharmony4-search.yaml")
    a, b = _flat(reference.to_dict()), _flat(search.to_dict())
    differ = {k for k in a if a[k] != b[k]}
    assert differ <= SEARCH_CHANGES, f"iharmony4-search also changes {sorted(differ - SEARCH_CHANGES)}"
    assert search.synth.augment_iharmony4 and search.tune.enabled
    space = search.tune.search_space  # the search starts from (includes) the reference's values
    lo, hi = space["lr"]["loguniform"]
    assert lo <= REFERENCE["train.lr"] <= hi
    assert REFERENCE["train.weight_decay"] in space["weight_decay"]["choice"]
    assert REFERENCE["train.lam"] in space["lam"]["choice"]


@pytest.mark.parametrize("profile", ["iharmony4-reference", "iharmony4-search"])
def test_readme_states_the_resolved_recipe(profile):
    """The README's recipe sentence is what `dirl config --profile X --recipe` prints, not prose."""
    cfg = load_config(PARAMS, profile=ROOT / "params" / f"{profile}.yaml")
    sentence = recipe_sentence(cfg)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert sentence in readme, f"README.md lacks the resolved recipe of {profile}:\n{sentence}"
