"""Speed switches: each one gives finite outputs close to fp32 NCHW; invalid combinations fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dirl.models import create_model
from dirl.speed import SpeedConfig, autocast, count_flops, make_grad_scaler, prepare_input, prepare_model

BF16_MAX, BF16_MEAN = 0.25, 0.05  # probability error budget of a bf16 forward through a random-init deep net


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    return create_model("dirl").train(), torch.randn(2, 3, 64, 64)


def run(model: nn.Module, x: torch.Tensor, speed: SpeedConfig) -> list[torch.Tensor]:
    fast = prepare_model(model, "cpu", speed)
    with torch.no_grad(), autocast("cpu", speed):
        outs = fast(prepare_input(x, speed))
    model.to(memory_format=torch.contiguous_format)
    return outs


@pytest.mark.parametrize(
    "speed",
    [SpeedConfig("fp32", channels_last=True), SpeedConfig("bf16"), SpeedConfig("bf16", channels_last=True)],
    ids=lambda s: s.label,
)
def test_switch_matches_fp32(model_and_input, speed):
    model, x = model_and_input
    ref = run(model, x, SpeedConfig())
    outs = run(model, x, speed)
    assert len(outs) == len(ref) == 6
    for o, r in zip(outs, ref):
        assert o.dtype == torch.float32 and torch.isfinite(o).all()
        err = (o - r).abs()
        if speed.precision == "fp32":
            assert err.max() < 1e-4
        else:
            assert err.max() < BF16_MAX and err.mean() < BF16_MEAN
    if speed.precision == "bf16":  # bf16 really ran: results are not bit-identical to fp32
        assert any(not torch.equal(o, r) for o, r in zip(outs, ref))


def test_bf16_channels_last_gradients_match_fp32():
    """Eval-mode BN: at random init, train-mode BN backward is so ill-conditioned that a 0.4 % perturbation of
    the input (bf16's rounding) already turns the encoder gradients by ~40 degrees, in fp32 as well."""
    torch.manual_seed(0)
    model = create_model("unet").eval()
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    grads = []
    for speed in (SpeedConfig(), SpeedConfig("bf16", channels_last=True)):
        model.zero_grad(set_to_none=True)
        fast = prepare_model(model, "cpu", speed)
        with autocast("cpu", speed):
            out = fast(prepare_input(x, speed))[0]
        F.binary_cross_entropy(out.float(), y).backward()
        g = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert torch.isfinite(g).all()
        grads.append(g)
        model.to(memory_format=torch.contiguous_format)
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.98


def test_compile_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    speed = SpeedConfig(compile=True, channels_last=True)
    compiled = prepare_model(net, "cpu", speed)
    assert compiled is not net
    with torch.no_grad():
        torch.testing.assert_close(compiled(prepare_input(x, speed)), net(x), atol=1e-5, rtol=1e-4)


def test_prepare_input_layout():
    x = torch.randn(2, 3, 16, 16)
    y = prepare_input(x, SpeedConfig(channels_last=True))
    assert y.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, y)
    assert prepare_input(x, SpeedConfig()) is x


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="precision must be one of"):
        SpeedConfig(precision="int8")
    with pytest.raises(ValueError, match="'fp16' is not supported on CPU"):
        autocast("cpu", SpeedConfig("fp16"))


def test_grad_scaler_only_for_fp16_cuda():
    assert not make_grad_scaler("cpu", SpeedConfig("bf16")).is_enabled()
    assert not make_grad_scaler("cpu", SpeedConfig("fp32")).is_enabled()
    if torch.cuda.is_available():
        assert make_grad_scaler("cuda", SpeedConfig("fp16")).is_enabled()
        assert not make_grad_scaler("cuda", SpeedConfig("bf16")).is_enabled()


def test_autocast_dtype_on_cpu():
    conv = nn.Conv2d(3, 4, 3)
    with autocast("cpu", SpeedConfig("bf16")):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.bfloat16
    with autocast("cpu", SpeedConfig("fp32")):
        assert conv(torch.randn(1, 3, 8, 8)).dtype == torch.float32


def test_count_flops_of_a_conv():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, 16, batch=2) == 2 * (3 * 9) * 8 * 16 * 16 * 2
    assert conv.training  # mode restored
