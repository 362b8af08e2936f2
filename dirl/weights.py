"""The trained-weights file (``results/train/model.pt``): a model's name, options and state dict.

Format (a plain dict saved with ``torch.save``, loadable with ``weights_only=True``)::

    {"format": "dirl-weights/1", "model": "dirl_lite", "options": {...create_model kwargs...},
     "input_size": 128, "state_dict": {...}, "metrics": {...}, "epoch": 7}

``load_weights`` rebuilds the model with :func:`dirl.models.create_model` and loads the tensors; a
corrupt, truncated or foreign file raises :class:`WeightsError` naming the path and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from dirl.io import atomic_path
from dirl.models import create_model

FORMAT = "dirl-weights/1"


class WeightsError(RuntimeError):
    """A weights file that cannot be used; the message names the file and the fix."""


def save_weights(
    path: str | os.PathLike,
    model: nn.Module,
    name: str,
    input_size: int,
    options: dict | None = None,
    metrics: dict | None = None,
    epoch: int | None = None,
) -> Path:
    """Write the weights file atomically (temp file beside it, fsync, then rename)."""
    path = Path(path)
    module = getattr(model, "module", model)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {
        "format": FORMAT,
        "model": name,
        "options": dict(options or {}),
        "input_size": int(input_size),
        "state_dict": state,
        "metrics": dict(metrics or {}),
        "epoch": epoch,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_weights(path: str | os.PathLike) -> dict:
    """Read and check a weights file without building the model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file (train first: `dvc repro train` or `dirl train`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt pickles/zips
        raise WeightsError(
            f"{path}: not a readable weights file ({type(e).__name__}: {e}); it may be truncated or not "
            "written by `dirl train` - re-run training or point --model at another file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        raise WeightsError(f"{path}: not a {FORMAT} file (expected keys format, model, options, state_dict)")
    return payload


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a weights file; returns (model in eval mode, payload without tensors)."""
    payload = read_weights(path)
    model = create_model(payload["model"], **payload.get("options", {}))
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: weights do not match model {payload['model']!r} "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    model.to(map_location).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, info
