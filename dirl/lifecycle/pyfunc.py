"""The DIRL model as an MLflow pyfunc: encoded image in, probability map of the same size out.

Input: a DataFrame with one column ``image`` of type *binary*: the bytes of an encoded image file (JPEG, PNG,
BMP, TIFF, WebP), RGB or gray, of ANY size. Over REST the bytes travel base64-encoded; the scoring server
decodes them because the signature declares the column binary.
Output: a DataFrame with one row per input: ``mask_png`` (binary: an 8-bit gray PNG of the probability map at
the input's size, 255 = probability 1), ``height`` and ``width`` (long). Over REST ``mask_png`` comes back
base64-encoded.

Python::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/dirl@champion")
    out = model.predict(pd.DataFrame({"image": [open("photo.jpg", "rb").read()]}))
    maps = decode_maps(out)  # list of (h, w) float32 arrays in [0, 1]

REST (``mlflow models serve -m models:/dirl@champion --env-manager local -h 127.0.0.1 -p 5001``, with
``MLFLOW_TRACKING_URI`` pointing at the registry and the venv's ``bin`` on ``PATH``: the scoring server runs
``uvicorn`` from there)::

    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
      -d "{\\"dataframe_split\\": {\\"columns\\": [\\"image\\"], \\"data\\": [[\\"$(base64 -w0 photo.jpg)\\"]]}}"
    # -> {"predictions": [{"mask_png": "<base64 PNG>", "height": 480, "width": 640}]}

or from Python: ``requests.post(url, json=rest_payload([path]))`` and ``decode_maps(resp.json())``.

Inside: decode (EXIF-rotated RGB), resize to the model's square input size, ImageNet-normalise, predict in
batches, resize the final map back to the input's size (``dirl.lifecycle.predict.predict_maps``). The weights
file is the model's only artifact; the ``dirl`` package travels with the model as code (``code_paths``), so
the served model imports it without an install.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("mask_png", "height", "width")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the dirl package


class DirlPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """Loads the weights artifact once; ``predict`` maps encoded images to encoded probability maps."""

    def load_context(self, context) -> None:
        from dirl.speed import default_device
        from dirl.weights import load_weights

        self.device = default_device()
        self.model, self.info = load_weights(context.artifacts["weights"], map_location=self.device)
        self.input_size = int(self.info["input_size"])  # predict_maps runs under torch.inference_mode

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from dirl.data.images import BadImage, decode_image
        from dirl.lifecycle.predict import predict_maps

        if not isinstance(model_input, pd.DataFrame) or INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"expected a DataFrame with a binary column {INPUT_COLUMN!r} (encoded image bytes)")
        images = []
        for i, value in enumerate(model_input[INPUT_COLUMN].tolist()):
            data = base64.b64decode(value) if isinstance(value, str) else bytes(value)
            try:
                images.append(decode_image(data, f"row {i}"))  # (h, w, 3) RGB uint8
            except BadImage as e:
                raise ValueError(f"input row {i} is not a readable image: {e.reason}") from None
        batch_size = int((params or {}).get("batch_size", 8))
        maps = predict_maps(self.model, images, self.input_size, batch_size, self.device)
        rows = [{"mask_png": encode_png8(p), "height": p.shape[0], "width": p.shape[1]} for p in maps]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def encode_png8(prob: np.ndarray) -> bytes:
    """Probability map (h, w) in [0, 1] -> 8-bit gray PNG bytes."""
    ok, buf = cv2.imencode(".png", np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8))
    if not ok:
        raise ValueError("OpenCV failed to encode the probability map")
    return buf.tobytes()


def decode_maps(output: pd.DataFrame | dict | list) -> list[np.ndarray]:
    """The pyfunc output (DataFrame) or the REST response JSON -> list of (h, w) float32 maps in [0, 1]."""
    if isinstance(output, dict):
        output = output.get("predictions", output)
    rows = output.to_dict("records") if isinstance(output, pd.DataFrame) else list(output)
    maps = []
    for row in rows:
        data = row["mask_png"]
        data = base64.b64decode(data) if isinstance(data, str) else bytes(data)
        m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise ValueError("a prediction's mask_png is not a PNG")
        maps.append(m.astype(np.float32) / 255.0)
    return maps


def rest_payload(images: Sequence[str | os.PathLike | bytes]) -> dict:
    """JSON body for ``POST /invocations``: ``{"dataframe_split": {"columns": ["image"], "data": [[b64], ...]}}``."""
    data = [[base64.b64encode(Path(x).read_bytes() if not isinstance(x, bytes) else x).decode("ascii")] for x in images]
    return {"dataframe_split": {"columns": [INPUT_COLUMN], "data": data}}


def signature():
    """Input: binary ``image``; output: binary ``mask_png``, long ``height``, long ``width``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("binary", "mask_png"), ColSpec("long", "height"), ColSpec("long", "width")]),
    )


def input_example(h: int = 48, w: int = 80) -> pd.DataFrame:
    """A small non-square PNG (a colour gradient with a shifted block) as a one-row input DataFrame."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 128)], -1).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] //= 2
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return pd.DataFrame({INPUT_COLUMN: [buf.tobytes()]})


def _version(dist: str) -> str:
    return importlib.metadata.version(dist).split("+")[0]  # 2.13.0+cpu -> 2.13.0


def pip_requirements() -> list[str]:
    """Pinned from the installed versions (never inferred by MLflow, which would record a CUDA torch)."""
    return [f"{d}=={_version(d)}" for d in ("mlflow", "torch", "numpy", "opencv-python-headless", "pandas")]


def _stage_code(dst: Path) -> Path:
    """Copy the dirl package (without caches) to ``dst/dirl`` for ``code_paths``."""
    target = dst / "dirl"
    shutil.copytree(PACKAGE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.tmp"))
    return target


def log_pyfunc(
    weights_path: str | os.PathLike,
    name: str = "model",
    registered_model_name: str | None = None,
    tags: dict[str, Any] | None = None,
    with_example: bool = True,
):
    """Log the weights file as a pyfunc model into the active run; returns MLflow's ``ModelInfo``.

    The weights file becomes the ``weights`` artifact (stored as ``artifacts/model.pt``).
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: no weights file to log (train first: `dirl train`)")
    with tempfile.TemporaryDirectory(prefix="dirl-pyfunc-") as tmp:
        staged = Path(tmp) / "model.pt"
        try:
            os.link(weights_path, staged)  # no copy when on the same filesystem
        except OSError:
            shutil.copyfile(weights_path, staged)
        code = _stage_code(Path(tmp))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=DirlPyfunc(),
            artifacts={"weights": str(staged)},
            code_paths=[str(code)],
            signature=signature(),
            input_example=input_example() if with_example else None,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            tags=tags,
        )
