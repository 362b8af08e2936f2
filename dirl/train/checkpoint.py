"""Training checkpoints (a folder) and the exported model file, both written atomically.

A checkpoint folder holds::

    model.pt      the model's state dict (unwrapped from DDP / torch.compile)
    state.pt      optimizer, scheduler, grad scaler, epoch, best metric, history, RNG states (python, numpy, torch)
    meta.json     epoch, best metric, model name and options: readable without torch
    config.yaml   the resolved config that produced it

The folder is written under a temporary name and renamed into place, so a reader sees all of it or none.
Everything is loadable with ``torch.load(weights_only=True)``: no pickled code.

:func:`export_model` writes a checkpoint's weights as the trained-weights file (``results/train/model.pt``,
format of :mod:`dirl.weights`; ``dirl.weights.load_weights`` rebuilds the network from it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml

from dirl.io import staging_dir, swap_in
from dirl.models import create_model
from dirl.weights import save_weights

MODEL_FILE = "model.pt"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
NO_REBUILD_KWARGS = ("pretrained", "pretrained_sha256")  # init-only options: the saved weights replace them


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the parameters: strips DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod  # type: ignore[assignment]
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def rng_state() -> dict:
    """RNG states of python, numpy (global) and torch (CPU, and CUDA when present), weights_only-loadable."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": np_state["state"]["key"].tolist(),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": np.array(n["key"], dtype=np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer=None,
    scheduler=None,
    scaler=None,
    *,
    epoch: int,
    best: float | None = None,
    best_epoch: int | None = None,
    history: list[dict] | None = None,
    config: dict | None = None,
    model_name: str = "",
    model_kwargs: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` (replacing an existing one atomically); return ``path``.

    ``epoch`` is the number of finished epochs; ``best``/``best_epoch`` the best validation metric so far.
    """
    path = Path(path)
    tmp = staging_dir(path)
    try:
        torch.save(unwrap(model).state_dict(), tmp / MODEL_FILE)
        state = {
            "epoch": int(epoch),
            "best": None if best is None else float(best),
            "best_epoch": best_epoch,
            "history": list(history or []),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_state(),
            "extra": dict(extra or {}),
        }
        torch.save(state, tmp / STATE_FILE)
        meta = {
            "epoch": int(epoch),
            "best": state["best"],
            "best_epoch": best_epoch,
            "model_name": model_name,
            "model_kwargs": _rebuild_kwargs(model_kwargs),
            "last": history[-1] if history else None,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        if config is not None:
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer=None,
    scheduler=None,
    scaler=None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load a checkpoint folder into the given objects; return its state (epoch, best, history, meta, config).

    Raises FileNotFoundError naming the folder when it is not a checkpoint.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file() or not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a training checkpoint (needs {MODEL_FILE} and {STATE_FILE}); "
            f"delete the run folder or pick another RunConfig name to start afresh"
        )
    state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    if model is not None:
        unwrap(model).load_state_dict(torch.load(path / MODEL_FILE, map_location=map_location, weights_only=True))
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])
    meta_path, cfg_path = path / META_FILE, path / CONFIG_FILE
    state["meta"] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    state["config"] = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
    return state


def _rebuild_kwargs(kwargs: dict | None) -> dict:
    return {k: v for k, v in (kwargs or {}).items() if k not in NO_REBUILD_KWARGS}


def export_model(checkpoint_dir: str | os.PathLike, out_file: str | os.PathLike, metrics: dict | None = None) -> Path:
    """Write the weights of a checkpoint folder as the trained-weights file (:mod:`dirl.weights` format)."""
    checkpoint_dir = Path(checkpoint_dir)
    meta = json.loads((checkpoint_dir / META_FILE).read_text())
    if not meta.get("model_name"):
        raise ValueError(f"{checkpoint_dir / META_FILE} names no model; it was not written by save_checkpoint")
    config = (
        yaml.safe_load((checkpoint_dir / CONFIG_FILE).read_text()) if (checkpoint_dir / CONFIG_FILE).is_file() else {}
    )
    options = meta.get("model_kwargs") or {}
    model = create_model(meta["model_name"], **options)
    model.load_state_dict(torch.load(checkpoint_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    input_size = int((config.get("model") or {}).get("input_size", 0))
    return save_weights(
        out_file, model, meta["model_name"], input_size, options=options, metrics=metrics, epoch=meta.get("epoch")
    )
