"""Every registered model: output contract, gradients, ImageNet-weight loading, input checks; DIRL's exact sizes."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from dirl.models import create_model, list_models, model_options, torchvision_resnet34_state_dict
from dirl.models.resnet import LAYER_NAMES, load_resnet_layers, sha256_file
from dirl.speed import count_flops

MODELS = list_models()
_CACHE: dict[str, torch.nn.Module] = {}


def get_model(name: str) -> torch.nn.Module:
    """One random-init instance per model for the whole file (building DIRL takes ~0.5 s)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name)
    return _CACHE[name]


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_the_four_models():
    assert {"dirl", "dirl_lite", "unet", "deeplabv3"} <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_contract(name):
    model = get_model(name).train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 64, 64)
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == len(model.output_names)
    assert len(outs) == (6 if name.startswith("dirl") else 1)
    for o in outs:
        assert o.shape == (2, 1, 64, 64) and o.dtype == torch.float32
        assert torch.isfinite(o).all() and o.min() >= 0 and o.max() <= 1
    sum(F.binary_cross_entropy(o, torch.zeros_like(o).bernoulli_(0.3)) for o in outs).backward()
    g = first_conv(model).weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    g4 = model.encoder.layer4[0].conv1.weight.grad
    assert g4 is not None and g4.abs().sum() > 0
    print(f"{name}: {n_params(model):,} parameters")


def test_dirl_output_order_matches_attention_maps():
    """outputs[1:] are the MDA maps A4, A3, A2, A1, A0, bilinearly resized to H x W."""
    model = get_model("dirl").eval()
    captured = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, k=k: captured.__setitem__(k, o[1])) for k, m in enumerate(model.mda)
    ]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert [tuple(captured[k].shape[-2:]) for k in range(5)] == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    for i, k in enumerate((4, 3, 2, 1, 0)):
        want = F.interpolate(captured[k], size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(outs[1 + i], want)


def test_dirl_parameter_counts_are_exact():
    model = get_model("dirl")
    assert n_params(model.encoder) == 35_438_976
    assert n_params(model.bfi) == 17_857_632
    assert [n_params(m) for m in model.mda] == [10_853] * 5
    assert n_params(model) == 53_462_074
    assert n_params(model.encoder.stem) == 1_920
    assert sum(n_params(getattr(model.encoder, k)) for k in LAYER_NAMES) == 21_275_136


def test_dirl_flops_and_lite_reduction():
    full = count_flops(get_model("dirl"), 64)
    lite = count_flops(get_model("dirl_lite"), 64)
    assert abs(full * (224 / 64) ** 2 - 209e9) / 209e9 < 0.01  # spec: ~209 GFLOPs per 224x224 image
    assert lite < full / 10
    print(f"GFLOPs at 64: dirl {full / 1e9:.2f}, dirl_lite {lite / 1e9:.2f}")


def test_torchvision_layout():
    """The hand-written ResNet-34 has torchvision's keys (218 entries) and parameter count."""
    sd = torchvision_resnet34_state_dict(seed=0)
    assert len(sd) == 218
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "layer4.2.bn2.num_batches_tracked",
        "fc.weight",
        "fc.bias",
    } <= set(sd)
    assert "layer1.0.downsample.0.weight" not in sd and "layer2.1.downsample.0.weight" not in sd
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 21_797_672
    assert tuple(sd["layer3.0.conv1.weight"].shape) == (256, 128, 3, 3)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Two torchvision-format resnet34 files with random values; the second lacks num_batches_tracked."""
    root = tmp_path_factory.mktemp("weights")
    sd = torchvision_resnet34_state_dict(seed=1)
    old = torchvision_resnet34_state_dict(seed=2, num_batches_tracked=False)
    torch.save(sd, root / "resnet34.pth")
    torch.save(old, root / "old.pth")
    return sd, root / "resnet34.pth", old, root / "old.pth"


TINY = {"dirl_tiny": 2_000_000, "dirl_tiny_deep": 3_000_000}  # narrower than ResNet-34: no ImageNet weights fit
RESNET34_MODELS = [m for m in MODELS if m not in TINY]


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_dirls_refuse_imagenet_weights_and_are_small(name, weight_files):
    _, path, _, _ = weight_files
    with pytest.raises(ValueError, match="leave model.pretrained empty"):
        create_model(name, pretrained=str(path))
    tiny = create_model(name)
    assert sum(p.numel() for p in tiny.parameters()) < TINY[name]
    assert tiny.size_divisor == 32 and tiny(torch.randn(2, 3, 64, 64))[0].shape == (2, 1, 64, 64)


def test_dirl_tiny_deep_adds_blocks_to_the_deep_stages_only():
    tiny, deep = create_model("dirl_tiny"), create_model("dirl_tiny_deep")
    n = {name: sum(p.numel() for p in m.parameters()) for name, m in (("tiny", tiny), ("deep", deep))}
    assert n["deep"] > n["tiny"]
    shapes = {k: v.shape for k, v in tiny.state_dict().items()}
    assert all(deep.state_dict()[k].shape == s for k, s in shapes.items())  # dirl_tiny's tensors, same shapes
    extra = {k.split(".")[1] for k in deep.state_dict() if k not in shapes and k.startswith("encoder.")}
    assert extra == {"layer3", "layer4", "layer5"}, extra


@pytest.mark.parametrize("name", RESNET34_MODELS)
def test_pretrained_backbone_loads_into_layers(name, weight_files):
    sd, path, old_sd, old_path = weight_files
    torch.manual_seed(0)
    base = create_model(name)
    torch.manual_seed(0)
    model = create_model(name, pretrained=str(path), pretrained_sha256=sha256_file(path))
    own, before = model.state_dict(), base.state_dict()
    for key, value in sd.items():
        if key.split(".")[0] in LAYER_NAMES:
            full_key = "encoder." + key
            torch.testing.assert_close(own[full_key], value)
            if value.is_floating_point():
                assert not torch.equal(before[full_key], value)
    # conv1/bn1/fc of the file are not loaded: everything outside layer1-4 keeps its (seeded) random init
    layer_prefixes = tuple(f"encoder.{n}." for n in LAYER_NAMES)
    for key, value in own.items():
        if not key.startswith(layer_prefixes):
            torch.testing.assert_close(value, before[key])
    # the method form, on an existing instance, with a file that lacks num_batches_tracked (pre-0.4 saves)
    base.backbone_pretrained(old_path)
    torch.testing.assert_close(base.encoder.layer3[5].bn2.weight, old_sd["layer3.5.bn2.weight"])
    assert not torch.equal(base.encoder.layer3[5].bn2.weight, sd["layer3.5.bn2.weight"])


def test_backbone_errors(tmp_path, weight_files):
    model = get_model("unet")
    sd, good = weight_files[:2]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        model.backbone_pretrained(good, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="not found"):
        model.backbone_pretrained(tmp_path / "absent.pth")

    missing = {k: v for k, v in sd.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['layer2.1.conv2.weight'\]"):
        load_resnet_layers(model.encoder, missing)
    extra = dict(sd, **{"layer4.2.conv3.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['layer4.2.conv3.weight'\]"):
        load_resnet_layers(model.encoder, extra)
    wrapped = {"module." + k: v for k, v in sd.items()}
    with pytest.raises(ValueError, match="not torchvision resnet34 keys"):
        load_resnet_layers(model.encoder, wrapped)
    bad_shape = dict(sd, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match="shape mismatch"):
        load_resnet_layers(model.encoder, bad_shape)

    # weights_only=True: a pickle holding arbitrary objects is refused with the file named
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"layer1.0.conv1.weight": object()}, protocol=2))
    with pytest.raises(ValueError, match="evil.pth"):
        model.backbone_pretrained(evil)


def test_weights_from_url_are_cached_with_hash_check(tmp_path, weight_files):
    """file:// URLs go through the same download path as http(s) ones: cached once, hash in the name checked."""
    sd, path = weight_files[:2]
    named = tmp_path / f"resnet34-{sha256_file(path)[:8]}.pth"
    named.write_bytes(path.read_bytes())
    cache = tmp_path / "cache"
    model = get_model("deeplabv3")
    model.backbone_pretrained(named.as_uri(), cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [named.name]  # no partial download left beside it
    torch.testing.assert_close(model.encoder.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])
    wrong = named.with_name("resnet34-00000000.pth")
    named.rename(wrong)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        model.backbone_pretrained(wrong.as_uri(), cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == [named.name]


def test_weights_over_http_with_explicit_sha256(tmp_path, weight_files):
    """An http URL (loopback server) with an explicit sha256 prefix: a wrong one leaves nothing in the cache, the
    right one is downloaded once and served from the cache afterwards."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from dirl.models.resnet import fetch_weights

    _, path = weight_files[:2]
    served = tmp_path / "srv"
    served.mkdir()
    (served / "weights.pth").write_bytes(path.read_bytes())
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
        cache = tmp_path / "cache"
        digest = sha256_file(path)
        with pytest.raises(ValueError, match=f"sha256 mismatch for weights {url}: expected 0000, got {digest}"):
            fetch_weights(url, sha256="0000", cache_dir=cache)
        assert list(cache.iterdir()) == []
        got = fetch_weights(url, sha256=digest[:12].upper(), cache_dir=cache)
        assert got == cache / "weights.pth" and sha256_file(got) == digest
        assert fetch_weights(url, sha256=digest, cache_dir=cache) == got
        assert len(requests) == 2  # the refused download and the good one; the third call used the cache
        with pytest.raises(ValueError, match="sha256 mismatch"):  # a cached file is checked too
            fetch_weights(url, sha256="0000", cache_dir=cache)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_size_is_refused(name):
    model = get_model(name)
    with pytest.raises(ValueError, match=f"not a multiple of {model.size_divisor}"):
        model(torch.randn(1, 3, 72, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))


def test_non_square_multiple_of_16_input():
    for name in ("dirl_lite", "unet", "deeplabv3"):
        outs = get_model(name).eval()(torch.randn(1, 3, 80, 48))
        assert all(o.shape == (1, 1, 80, 48) for o in outs)


def test_unknown_model_and_option():
    with pytest.raises(ValueError, match="registered models: .*dirl"):
        create_model("dirl_v9")
    with pytest.raises(TypeError, match="'pretrainedd'"):
        create_model("unet", pretrainedd="x.pth")
    assert "pretrained" in model_options("dirl") and "output_stride" in model_options("deeplabv3")
