"""model.pretrained as a user meets it: resolved before any worker starts, fetched by one command, a missing file
named in one line; and the other reference parts that are plain functions (sync BatchNorm choice, test resize)."""

from __future__ import annotations

import numpy as np
import pytest

from dirl.cli import main
from dirl.models.resnet import TORCHVISION_RESNET34_SHA256, TORCHVISION_RESNET34_URL, resolve_backbone


def test_relative_path_is_made_absolute_against_the_workspace(tmp_path):
    (tmp_path / "data" / "weights").mkdir(parents=True)
    f = tmp_path / "data" / "weights" / "resnet34-b627a593.pth"
    f.write_bytes(b"x")
    assert resolve_backbone("data/weights/resnet34-b627a593.pth", tmp_path) == str(f.resolve())
    assert resolve_backbone("", tmp_path) == ""
    assert resolve_backbone(TORCHVISION_RESNET34_URL, tmp_path) == TORCHVISION_RESNET34_URL


def test_missing_file_fails_in_one_line_naming_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        resolve_backbone("data/weights/resnet34-b627a593.pth", tmp_path)
    text = str(e.value)
    assert "\n" not in text and str(tmp_path) in text and "dirl weights fetch" in text
    assert TORCHVISION_RESNET34_SHA256 in text


def test_train_with_a_missing_backbone_stops_before_ray(tmp_path, monkeypatch, capsys, params_path):
    """`dirl train` names the missing file in one line (exit 1) and starts no Ray worker."""
    import yaml

    params = yaml.safe_load(params_path.read_text())
    params["model"].update(name="dirl", pretrained="data/weights/resnet34-b627a593.pth")
    params["train"].update(lr=1e-4, weight_decay=1e-4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    from helpers.training import make_shards

    make_shards(tmp_path / "data" / "shards")
    make_shards(tmp_path / "data" / "synth")
    assert main(["train"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "model.pretrained" in err[0] and "dirl weights fetch" in err[0]


def test_weights_info_and_offline_fetch(tmp_path, capsys, monkeypatch):
    assert main(["weights", "info"]) == 0
    out = capsys.readouterr().out
    assert TORCHVISION_RESNET34_URL in out and TORCHVISION_RESNET34_SHA256 in out
    # offline: the downloader fails; the command says so in one line, with what to do
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    assert main(["weights", "fetch", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline" in err[0] and "connected machine" in err[0]


def test_fetch_checks_the_full_hash_of_a_file_already_there(tmp_path, capsys):
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"not the weights")
    assert main(["weights", "fetch", "--dest", str(tmp_path)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mode,world,local,device,expect",
    [
        ("auto", 4, 2, "cuda", True),
        ("auto", 1, 8, "cuda", False),
        ("auto", 2, 8, "cuda", False),
        ("on", 2, 8, "cuda", True),
        ("off", 4, 2, "cuda", False),
        ("auto", 4, 2, "cpu", False),
    ],
)
def test_sync_bn_choice(mode, world, local, device, expect):
    from dirl.train.worker import use_sync_bn

    sync, note = use_sync_bn(mode, world, local, device)
    assert sync is expect
    if device == "cpu" and mode != "off" and world > 1:
        assert note and "needs GPU" in note  # asked for but impossible: said, not silent


def test_bilinear_test_resize_differs_from_the_area_filter_when_shrinking():
    from dirl.data.transforms import eval_resize

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)
    mask = np.zeros((900, 1200), np.uint8)
    mask[300:600, 400:800] = 1
    a_img, a_mask = eval_resize(img, mask, 224)
    b_img, b_mask = eval_resize(img, mask, 224, "bilinear")
    assert a_img.shape == b_img.shape == (224, 224, 3) and set(np.unique(b_mask)) <= {0, 1}
    assert np.abs(a_img.astype(int) - b_img.astype(int)).mean() > 5  # noise: area averages it away, bilinear not
    small = rng.integers(0, 256, (240, 240, 3), dtype=np.uint8)  # a mild shrink: both are bilinear
    assert np.array_equal(
        eval_resize(small, mask[:240, :240], 224)[0], eval_resize(small, mask[:240, :240], 224, "bilinear")[0]
    )
