"""Speed switches: precision (fp32 / bf16 / fp16 autocast), channels_last memory format, torch.compile.

    speed = SpeedConfig(precision="bf16", channels_last=True)
    model = prepare_model(model, device, speed)
    scaler = make_grad_scaler(device, speed)
    with autocast(device, speed):
        preds = model(prepare_input(x, speed))
    loss = loss_fn([p.float() for p in preds], y)  # outside autocast: CUDA autocast refuses F.binary_cross_entropy
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()

On CPU, bf16 autocast runs on AVX-512-BF16/AMX hardware at up to ~2-3x fp32 speed; fp16 autocast on CPU is
refused. On CUDA, bf16 and fp16 use AMP; only fp16 needs the gradient scaler.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import torch
import torch.nn as nn

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SpeedConfig:
    """precision: "fp32" | "bf16" | "fp16" (autocast dtype); channels_last: NHWC tensors; compile: torch.compile."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"speed.precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def label(self) -> str:
        """Short name, e.g. 'fp32', 'channels_last+bf16', 'bf16+compile'."""
        parts = ["channels_last"] if self.channels_last else []
        return "+".join(parts + [self.precision] + (["compile"] if self.compile else []))


def default_device() -> torch.device:
    """CUDA when there is a GPU, else CPU: where evaluation and serving run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def prepare_model(model: nn.Module, device: torch.device | str, speed: SpeedConfig) -> nn.Module:
    """Move the model to `device`, switch to channels_last when asked, wrap in torch.compile when asked.

    The returned module is the one to call; the original `model` still owns the parameters (for state dicts).
    """
    model = model.to(device)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if speed.compile:
        return torch.compile(model)  # type: ignore[return-value]
    return model


def prepare_input(x: torch.Tensor, speed: SpeedConfig) -> torch.Tensor:
    """Put a (B, C, H, W) batch in channels_last layout when asked (values unchanged)."""
    if speed.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device | str, speed: SpeedConfig) -> ContextManager:
    """The autocast context for `speed.precision` on `device` (a no-op context for fp32).

    bf16 on CPU -> CPU autocast; bf16/fp16 on CUDA -> AMP; fp16 on CPU -> ValueError.
    """
    dev = _device_type(device)
    if speed.precision == "fp32":
        return contextlib.nullcontext()
    if dev == "cpu" and speed.precision == "fp16":
        raise ValueError("precision 'fp16' is not supported on CPU: use 'bf16' (or 'fp32'), or a CUDA device")
    if dev == "cuda" and speed.precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16: use precision 'fp16' (with the grad scaler) or 'fp32'")
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"autocast on device type {dev!r} is not supported here: use 'cpu' or 'cuda'")
    return torch.autocast(device_type=dev, dtype=_DTYPES[speed.precision])


def make_grad_scaler(device: torch.device | str, speed: SpeedConfig) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (a pass-through otherwise)."""
    dev = _device_type(device)
    enabled = dev == "cuda" and speed.precision == "fp16"
    return torch.amp.GradScaler(dev if dev in ("cpu", "cuda") else "cpu", enabled=enabled)


def count_flops(
    model: nn.Module, size: int | tuple[int, int] = 224, batch: int = 1, device: torch.device | str = "cpu"
) -> int:
    """Forward FLOPs per batch (convolutions and matmuls, 2 per multiply-add), from FlopCounterMode.

    Runs one forward in eval mode under no_grad at `size`; the model's train/eval mode is restored.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch, 3, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
