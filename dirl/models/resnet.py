"""ResNet-34 written out by hand, with torchvision's exact state-dict key names.

torchvision cannot be installed beside the CPU torch wheel, so the blocks are rebuilt here. Key names match
torchvision's `resnet34()` (`layer1.0.conv1.weight`, `layer2.0.downsample.0.weight`, `bn1.running_mean`, ...),
so a published ImageNet checkpoint (e.g. `TORCHVISION_RESNET34_URL`) loads into `layer1`..`layer4` unchanged.

Also here: reading a torchvision-format state dict from a path or URL (sha256-checked, `weights_only=True`),
loading its `layer1`..`layer4` into any model, the `ResNet34Segmenter` base class every registered model
derives from, and `torchvision_resnet34_state_dict()` which builds a full random state dict in that format.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.hub
import torch.nn as nn
import torch.nn.functional as F

from dirl.io import sha256_file  # noqa: F401 - also imported from here

TORCHVISION_RESNET34_URL = "https://download.pytorch.org/models/resnet34-b627a593.pth"
# torchvision's ImageNet ResNet-34 (IMAGENET1K_V1, `resnet34(pretrained=True)`): the file's full sha256 and size
TORCHVISION_RESNET34_SHA256 = "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"
TORCHVISION_RESNET34_BYTES = 87_319_819
LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")
IGNORED_PREFIXES = ("conv1.", "bn1.", "fc.")  # torchvision stem and classifier: never loaded
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution, no bias, 'same' padding for stride 1."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU.

    `downsample` (1x1 conv + BN) is built when the stride or the channel count changes, as in torchvision.
    Unlike torchvision, `dilation > 1` is supported (used by DeepLabv3's dilated layer3/layer4).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, first_dilation: int | None = None):
        super().__init__()
        d0 = dilation if first_dilation is None else first_dilation
        self.conv1 = conv3x3(cin, cout, stride, d0)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout, 1, dilation)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, cin, h, w) -> (B, cout, h/s, w/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, cin, h, w) -> (B, cout, h/s, w/s)
        out = self.bn2(self.conv2(out))  # (B, cout, h/s, w/s)
        return self.relu(out + identity)


def make_layer(
    cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1, previous_dilation: int = 1
) -> nn.Sequential:
    """A ResNet stage of `blocks` BasicBlocks; the first one carries the stride (torchvision's `_make_layer`)."""
    layers = [BasicBlock(cin, cout, stride, dilation, first_dilation=previous_dilation)]
    layers += [BasicBlock(cout, cout, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def resnet34_layers(dilate_layer3: bool = False, dilate_layer4: bool = False) -> dict[str, nn.Sequential]:
    """layer1..layer4 of ResNet-34 (3, 4, 6, 3 blocks; 64, 128, 256, 512 channels; strides 1, 2, 2, 2).

    `dilate_layerN` replaces that layer's stride 2 by dilation (torchvision's `replace_stride_with_dilation`).
    The layers hold 21,275,136 parameters; the keys do not depend on the dilation.
    """
    out, dilation, cin = {}, 1, 64
    for name, cout, blocks, stride, dilate in (
        ("layer1", 64, 3, 1, False),
        ("layer2", 128, 4, 2, False),
        ("layer3", 256, 6, 2, dilate_layer3),
        ("layer4", 512, 3, 2, dilate_layer4),
    ):
        previous = dilation
        if dilate:
            dilation, stride = dilation * stride, 1
        out[name] = make_layer(cin, cout, blocks, stride, dilation, previous)
        cin = cout
    init_resnet_(nn.ModuleList(out.values()))
    return out


def init_resnet_(module: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet34(nn.Module):
    """The full torchvision ResNet-34 classifier layout (conv1, bn1, layer1-4, fc), 21,797,672 parameters."""

    layer1: nn.Sequential  # added by name (torchvision's state-dict keys)
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for name, layer in resnet34_layers().items():
            self.add_module(name, layer)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 3, H, W) -> (B, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # -> (B, 512, H/32, W/32)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))  # -> (B, num_classes)


class ResNet34Features(nn.Module):
    """The standard ResNet-34 trunk (7x7/2 stem + max-pool + layer1..layer4) returning every scale.

    Used by the UNet and DeepLabv3 baselines. With `output_stride=8` or `16`, layer3/layer4 trade stride for
    dilation (DeepLab); 32 is the plain network.
    """

    layer1: nn.Sequential  # added by name (torchvision's state-dict keys)
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        init_resnet_(self)
        layers = resnet34_layers(dilate_layer3=output_stride == 8, dilate_layer4=output_stride in (8, 16))
        for name, layer in layers.items():
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # shapes for output_stride=32
        x0 = self.relu(self.bn1(self.conv1(x)))  # (B, 3, H, W) -> (B, 64, H/2, W/2)
        x1 = self.layer1(self.maxpool(x0))  # -> (B, 64, H/4, W/4)
        x2 = self.layer2(x1)  # -> (B, 128, H/8, W/8)
        x3 = self.layer3(x2)  # -> (B, 256, H/16, W/16)   (H/8 at output_stride 8)
        x4 = self.layer4(x3)  # -> (B, 512, H/32, W/32)   (H/16 or H/8 when dilated)
        return [x0, x1, x2, x3, x4]


def torchvision_resnet34_state_dict(seed: int = 0, num_batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """A full torchvision-format resnet34 state dict (conv1, bn1, layer1-4, fc) filled with random values.

    Every float tensor is drawn from N(0, 0.05) (running_var from U(0.5, 1.5)) with a seeded generator, so the
    values differ from any model's own initialisation. `num_batches_tracked=False` drops those keys, as in
    checkpoints saved before PyTorch 0.4.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in ResNet34().state_dict().items():
        if key.endswith("num_batches_tracked"):
            if num_batches_tracked:
                out[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.rand(t.shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(t.shape, generator=gen) * 0.05
    return out


# ----------------------------------------------------------------------------- weight files


def default_cache_dir() -> Path:
    """Where downloaded weights are kept: $DIRL_CACHE_DIR, else ~/.cache/dirl/weights."""
    return Path(os.environ.get("DIRL_CACHE_DIR", Path.home() / ".cache" / "dirl" / "weights"))


def _expected_sha256(sha256: str | None, name: str) -> str | None:
    """`sha256` (full digest or prefix, lower-cased); without one, the hash in a torchvision-style file name
    (`resnet34-b627a593.pth`), else None."""
    if sha256:
        return sha256.lower()
    m = re.search(r"-([0-9a-f]{8,64})\.pth?$", name)
    return m.group(1) if m else None


def _mismatch(source: str, expected: str, actual: str) -> ValueError:
    return ValueError(
        f"sha256 mismatch for weights {source}: expected {expected}, got {actual}. "
        "The file is corrupt or not the one intended: delete it and fetch it again, "
        "or pass the right sha256."
    )


def _check_sha256(path: Path, sha256: str | None, source: str) -> None:
    """Compare against `sha256` (full digest or a prefix); without one, use a torchvision-style name hash."""
    expected = _expected_sha256(sha256, path.name)
    if expected is None:
        return
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise _mismatch(source, expected, actual)


def fetch_weights(
    path_or_url: str | Path, sha256: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local path to the weights: a local file as is, a URL downloaded once into `cache_dir` (atomically).

    The sha256 (full hex digest or a prefix of it) is checked when given; for files named like torchvision's
    (`resnet34-b627a593.pth`) the hash in the name is checked when no sha256 is given. Downloads go through
    `torch.hub.download_url_to_file` (http(s), ftp and file:// URLs), which checks the hash while it streams and
    renames the file into place only when it matches.
    """
    src, sha256 = str(path_or_url), (sha256 or None)
    if re.match(r"^(https?|ftp|file)://", src):
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        dest = cache / Path(urllib.parse.urlparse(src).path).name
        if dest.exists():
            _check_sha256(dest, sha256, src)
            return dest
        expected = _expected_sha256(sha256, dest.name)
        try:
            torch.hub.download_url_to_file(src, str(dest), hash_prefix=expected, progress=False)
        except RuntimeError as e:
            if expected is None or not str(e).startswith("invalid hash value"):
                raise
            got = re.search(r'got "([0-9a-f]+)"', str(e))
            raise _mismatch(src, expected, got.group(1) if got else "another digest") from None
        return dest
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights not found: {path}. Pass a torchvision-format resnet34 "
            f"state dict file or a URL (e.g. {TORCHVISION_RESNET34_URL})."
        )
    _check_sha256(path, sha256, str(path))
    return path


def resolve_backbone(value: str, root: str | os.PathLike) -> str:
    """``model.pretrained`` as every Ray worker must see it: a URL as is, a path made absolute against the workspace
    ``root`` (where params.yaml is) and checked to exist, so a missing file fails here, in one line, before any
    worker starts. Empty stays empty (random init)."""
    if not value or re.match(r"^(https?|ftp|file)://", value):
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else (Path(root) / path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained = {value}: no such file ({path.resolve()}). Fetch torchvision's ResNet-34 on a "
            f"connected machine with `dirl weights fetch --dest {Path(value).parent}` ({TORCHVISION_RESNET34_URL}, "
            f'sha256 {TORCHVISION_RESNET34_SHA256}) and copy it there, or set model.pretrained: "" for random init'
        )
    return str(path.resolve())


def fetch_resnet34(dest: str | os.PathLike) -> Path:
    """Download torchvision's ImageNet ResNet-34 into the folder ``dest`` (``torch.hub``'s downloader, checked
    against its full sha256 while it streams; a file already there is checked, not fetched again)."""
    try:
        return fetch_weights(TORCHVISION_RESNET34_URL, TORCHVISION_RESNET34_SHA256, cache_dir=dest)
    except (urllib.error.URLError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        reason = getattr(e, "reason", e)
        raise ConnectionError(
            f"cannot download {TORCHVISION_RESNET34_URL} ({reason}): this machine is offline or "
            f"the URL is blocked. Run `dirl weights fetch` on a connected machine and copy "
            f"resnet34-b627a593.pth (sha256 {TORCHVISION_RESNET34_SHA256}) into {dest}"
        ) from None


def read_state_dict(
    path_or_url: str | Path, sha256: str | None = None, cache_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Read a torchvision-format state dict with `torch.load(weights_only=True)` (sha256-checked)."""
    path = fetch_weights(path_or_url, sha256, cache_dir)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read backbone weights {path}: {e}") from e
    if not isinstance(sd, Mapping):
        raise ValueError(f"backbone weights {path} hold a {type(sd).__name__}, not a state dict")
    return dict(sd)


def load_resnet_layers(target: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict") -> int:
    """Copy `layer1.*`..`layer4.*` of a torchvision resnet34 state dict into `target.layer1`..`target.layer4`.

    conv1/bn1/fc keys are ignored. Missing or unexpected keys inside layer1-4, any other key, or a shape
    mismatch raise ValueError naming the keys. Returns the number of tensors copied.
    """
    others = [k for k in state_dict if not k.startswith(IGNORED_PREFIXES) and k.split(".")[0] not in LAYER_NAMES]
    if others:
        raise ValueError(
            f"{source}: keys that are not torchvision resnet34 keys: {others[:5]}"
            f"{' ...' if len(others) > 5 else ''} (a wrapped checkpoint? strip 'module.' or "
            "take its 'state_dict' entry first)"
        )
    copied = 0
    for name in LAYER_NAMES:
        layer = getattr(target, name)
        own = layer.state_dict()
        given = {k[len(name) + 1 :]: v for k, v in state_dict.items() if k.startswith(name + ".")}
        missing = [f"{name}.{k}" for k in own if k not in given and not k.endswith("num_batches_tracked")]
        unexpected = [f"{name}.{k}" for k in given if k not in own]
        if missing or unexpected:
            raise ValueError(
                f"{source}: does not match ResNet-34 {name}: missing keys {missing[:5]}, "
                f"unexpected keys {unexpected[:5]} (is this a torchvision resnet34 state dict?)"
            )
        bad = [
            f"{name}.{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in given.items()
            if tuple(v.shape) != tuple(own[k].shape)
        ]
        if bad:
            raise ValueError(f"{source}: shape mismatch (file vs model): {bad[:5]}")
        with torch.no_grad():
            for k, v in given.items():
                own[k].copy_(v)
                copied += 1
    return copied


# ----------------------------------------------------------------------------- model base class


def check_input(x: torch.Tensor, divisor: int = 16) -> None:
    """Raise ValueError unless x is (B, 3, H, W) with H and W multiples of `divisor`."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % divisor or w % divisor or h == 0 or w == 0:
        raise ValueError(
            f"input size {h}x{w} is not a multiple of {divisor}: resize or crop the images (e.g. to 224 or 256)"
        )


class ResNet34Segmenter(nn.Module):
    """Base of every registered model: a ResNet-34 encoder in `self.encoder` (with layer1..layer4).

    Input: (B, 3, H, W) ImageNet-normalised float, H and W multiples of `size_divisor`.
    Output: a list of (B, 1, H, W) float32 probability maps, `output_names` naming them, the final map first.
    """

    size_divisor = 16
    output_names: tuple[str, ...] = ("final",)
    encoder: nn.Module

    def backbone_pretrained(
        self, path_or_url: str | Path, sha256: str | None = None, cache_dir: str | Path | None = None
    ) -> ResNet34Segmenter:
        """Load ImageNet (torchvision-format resnet34) weights into encoder.layer1..layer4; returns self."""
        sd = read_state_dict(path_or_url, sha256, cache_dir)
        load_resnet_layers(self.encoder, sd, source=str(path_or_url))
        return self

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.size_divisor)
