"""Prediction on image files of any size, and the MLflow pyfunc model (load_model(...).predict)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pandas as pd
import pytest

from dirl.data.images import decode_image, encode_jpeg
from dirl.lifecycle.predict import predict_maps, predict_paths
from dirl.weights import load_weights
from helpers.builders import bomb_png, peak_rss_mb
from helpers.lifecycle import composite, make_cfg, make_weights
from helpers.paths import PARAMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_predict_folder_any_size_reports_bad_files(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    img, _ = composite(1, 37, 53)  # non-square, not a multiple of 16
    cv2.imwrite(str(src / "wide.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(src / "gray.png"), img[..., 0].T.copy())  # 53 x 37 grayscale
    cv2.imwrite(str(src / "sub" / "wide.png"), cv2.cvtColor(img[:20], cv2.COLOR_RGB2BGR))  # same stem, 20 x 53
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (src / "truncated.jpg").write_bytes(encode_jpeg(img)[:-300])  # cut inside the scan data
    (src / "notes.txt").write_text("not an image: ignored in a folder")
    weights = make_weights(tmp_path / "unet.pt")
    out = tmp_path / "out"

    summary = predict_paths(
        make_cfg(tmp_path),
        [str(src), str(tmp_path / "missing.jpg")],
        model_ref=str(weights),
        out_dir=str(out),
        batch_size=2,
    )
    assert summary["inputs"] == 5 and summary["written"] == 3
    failed = {os.path.basename(f["file"]): f["reason"] for f in summary["failed"]}
    assert set(failed) == {"corrupt.jpg", "truncated.jpg", "missing.jpg"}
    assert "truncated JPEG" in failed["truncated.jpg"] and "no such file" in failed["missing.jpg"]
    assert json.loads((out / "summary.json").read_text())["failed"] == summary["failed"]
    for stem, shape in (("wide", (20, 53)), ("gray", (53, 37)), ("wide-1", (37, 53))):  # in/sub/wide.png sorts first
        mask = cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        over = cv2.imread(str(out / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == shape and mask.dtype == np.uint8 and over.shape == shape + (3,)
    assert not list(out.glob("*.tmp")) and not (out / "notes_mask.png").exists()

    # the written map is the model's map at the input size (batched with other sizes makes no difference)
    model, info = load_weights(weights)
    alone = predict_maps(model, [decode_image(src / "wide.jpg")], info["input_size"])[0]
    written = cv2.imread(str(out / "wide-1_mask.png"), cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
    assert alone.shape == (37, 53) and np.abs(written - alone).max() <= 0.5 / 255 + 1e-6


def test_predict_threshold_writes_binary_masks(tmp_path):
    img, _ = composite(2, 40, 40)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    weights = make_weights(tmp_path / "unet.pt")
    predict_paths(make_cfg(tmp_path), [str(tmp_path / "a.png")], str(weights), str(tmp_path / "o"), threshold=0.5)
    mask = cv2.imread(str(tmp_path / "o" / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) <= {0, 255}
    with pytest.raises(ValueError, match="threshold must be in"):
        predict_paths(make_cfg(tmp_path), [str(tmp_path)], str(weights), str(tmp_path / "o"), threshold=2.0)


def test_pyfunc_round_trip_any_size(tmp_path):
    import mlflow

    from dirl.lifecycle.pyfunc import decode_maps, log_pyfunc, pip_requirements, rest_payload

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.MlflowClient().create_experiment("pyfunc", artifact_location=(tmp_path / "art").as_uri())
    weights = make_weights(tmp_path / "unet.pt")
    with mlflow.start_run(experiment_id=exp):
        info = log_pyfunc(weights)
    reqs = pip_requirements()
    assert any(r.startswith("torch==") and "+" not in r for r in reqs) and len(reqs) == 5
    local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp_path / "dl"))
    assert sorted(open(os.path.join(local, "requirements.txt")).read().split()) == sorted(reqs)
    assert os.path.isfile(os.path.join(local, "code", "dirl", "weights.py"))

    pm = mlflow.pyfunc.load_model(info.model_uri)
    a, _ = composite(3, 45, 70)
    b, _ = composite(4, 90, 31)
    ok_a, buf_a = cv2.imencode(".png", cv2.cvtColor(a, cv2.COLOR_RGB2BGR))
    out = pm.predict(pd.DataFrame({"image": [buf_a.tobytes(), encode_jpeg(b)]}))
    maps = decode_maps(out)
    assert [m.shape for m in maps] == [(45, 70), (90, 31)] and list(out["height"]) == [45, 90]
    model, winfo = load_weights(weights)
    assert np.abs(maps[0] - predict_maps(model, [a], winfo["input_size"])[0]).max() <= 0.5 / 255 + 1e-6

    # the REST body format is what the scoring server parses with this signature
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    body = rest_payload([buf_a.tobytes()])
    parsed = infer_and_parse_data(body, pm.metadata.get_input_schema())
    assert parsed["image"][0] == buf_a.tobytes()

    with pytest.raises(Exception, match="row 0 is not a readable image"):
        pm.predict(pd.DataFrame({"image": [b"not an image"]}))


# ----------------------------------------------------------------------------- hostile inputs


def test_declared_size_reads_headers_without_decoding():
    from dirl.data.images import declared_size

    img, _ = composite(5, 37, 53)
    for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff"):
        ok, buf = cv2.imencode(ext, img)
        assert declared_size(buf.tobytes()) == (37, 53), ext
    assert declared_size(bomb_png()) == (30000, 30000) and len(bomb_png()) < 1000
    assert declared_size(b"") is None and declared_size(b"\xff\xd8\xff\xe0\x00") is None
    assert declared_size(b"not an image at all") is None


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.png").write_bytes(bomb_png())
    weights = make_weights(tmp_path / "unet.pt")
    out = tmp_path / "out"
    before = peak_rss_mb()
    summary = predict_paths(make_cfg(tmp_path), [str(tmp_path / "in")], str(weights), str(out))
    assert peak_rss_mb() - before < 200  # decoding it would take 2.7 GB
    assert summary["written"] == 0 and summary["tried"] == 1
    (failed,) = summary["failed"]
    assert failed["file"].endswith("bomb.png") and "30000x30000" in failed["reason"] and "pixel cap" in failed["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no output file, no temporary file


def test_pixel_cap_is_configurable(tmp_path, monkeypatch):
    from dirl.data.images import BadImage, decode_image

    img, _ = composite(6, 40, 50)
    ok, buf = cv2.imencode(".png", img)
    assert decode_image(buf.tobytes()).shape == (40, 50, 3)
    with pytest.raises(BadImage, match="above the pixel cap"):
        decode_image(buf.tobytes(), max_pixels=1999)
    monkeypatch.setenv("DIRL_MAX_PIXELS", "1999")
    with pytest.raises(BadImage, match="DIRL_MAX_PIXELS"):
        decode_image(buf.tobytes())
    assert decode_image(buf.tobytes(), max_pixels=0).shape == (40, 50, 3)  # 0 = no cap
    monkeypatch.setenv("DIRL_MAX_PIXELS", "0")
    assert decode_image(buf.tobytes()).shape == (40, 50, 3)


def test_pyfunc_refuses_a_bomb(tmp_path):
    from dirl.lifecycle.pyfunc import DirlPyfunc

    model, info = load_weights(make_weights(tmp_path / "unet.pt"))
    pm = DirlPyfunc()
    pm.model, pm.info, pm.input_size, pm.device = model, info, int(info["input_size"]), "cpu"
    before = peak_rss_mb()
    with pytest.raises(ValueError, match=r"row 0 .*30000x30000 pixels.*pixel cap"):
        pm.predict(None, pd.DataFrame({"image": [bomb_png()]}))
    assert peak_rss_mb() - before < 200


def _cli_predict(tmp_path, inputs, *extra):
    from dirl.cli import main

    weights = make_weights(tmp_path / "unet.pt")
    sets = ["model.name=unet", "model.input_size=32", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    argv = [
        "predict",
        "--params",
        str(PARAMS),
        *[a for s in sets for a in ("--set", s)],
        *map(str, inputs),
        "--model",
        str(weights),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]
    return main(argv)


def test_cli_predict_fails_when_nothing_was_written(tmp_path, capsys):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(SystemExit) as e:
        _cli_predict(tmp_path, [tmp_path / "bomb.png", tmp_path / "corrupt.jpg", tmp_path / "missing.png"])
    assert e.value.code != 0 and "3 of 3 inputs failed; nothing written" in str(e.value.code)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json"]


def test_cli_predict_max_pixels_and_partial_failure(tmp_path, capsys):
    img, _ = composite(7, 40, 50)
    cv2.imwrite(str(tmp_path / "ok.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    with pytest.raises(SystemExit, match="1 of 1 inputs failed"):
        _cli_predict(tmp_path, [tmp_path / "ok.png"], "--max-pixels", "1000")
    (tmp_path / "empty.png").write_bytes(b"")
    assert _cli_predict(tmp_path, [tmp_path / "ok.png", tmp_path / "empty.png"]) == 0
    assert "1 of 2 inputs failed" in capsys.readouterr().err
    assert (tmp_path / "out" / "ok_mask.png").is_file() and (tmp_path / "out" / "ok_overlay.png").is_file()


def test_a_failed_write_leaves_no_partial_output(tmp_path, monkeypatch):
    import dirl.lifecycle.predict as predict_mod

    img, _ = composite(8, 40, 50)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    def no_memory(*a, **k):
        raise MemoryError("simulated")

    monkeypatch.setattr(predict_mod, "overlay", no_memory)  # the mask is ready, the overlay fails
    out = tmp_path / "out"
    summary = predict_paths(
        make_cfg(tmp_path), [str(tmp_path / "a.png")], str(make_weights(tmp_path / "w.pt")), str(out)
    )
    assert summary["written"] == 0 and "cannot write its outputs" in summary["failed"][0]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_predict_from_mlflow_off_a_terminal_writes_no_download_bar(tmp_path, monkeypatch, capfd):
    """Off a terminal (here: pytest's captured stderr, as in a log file) MLflow's artifact download bar would write
    a carriage-return update per file; predict prints at most one progress line instead."""
    import mlflow

    from dirl.lifecycle.pyfunc import log_pyfunc
    from helpers.lifecycle import make_training_run

    cfg = make_cfg(tmp_path)
    (tmp_path / "train").mkdir()
    weights = make_weights(tmp_path / "train" / "model.pt", "unet", 32)
    run_id = make_training_run(cfg, tmp_path / "train")
    with mlflow.start_run(run_id=run_id):
        log_pyfunc(weights, name="model")  # the run's logged model, as training logs it
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # as a fresh `dirl predict` starts
    img, _ = composite(3, 40, 50)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    capfd.readouterr()
    summary = predict_paths(cfg, [tmp_path / "a.png"], model_ref=run_id, out_dir=tmp_path / "out")
    assert summary["written"] == 1
    err = capfd.readouterr().err
    assert "\r" not in err, err[:300]
    progress = [ln for ln in err.splitlines() if "Downloading" in ln or "predict:" in ln]
    assert len(progress) <= 1, progress
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
