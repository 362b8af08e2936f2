"""Hostile inputs through the command line: every malformed params file is refused by `dirl config` naming its
key, every bad `dirl predict` input is refused naming its file, nothing is written for them, no traceback.

The last test prints the tally line (``hostile configs and predict inputs: tried N / refused with the key or file
named N / accepted good 1 of 1``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dirl.cli import main
from dirl.data.images import encode_jpeg
from helpers.builders import bomb_png, peak_rss_mb
from helpers.hostile import HOSTILE_CONFIGS, hostile_file
from helpers.lifecycle import composite, make_weights
from helpers.paths import PARAMS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TALLY = {"tried": 0, "named": 0, "good_tried": 0, "good_accepted": 0}


@pytest.fixture(scope="module")
def tally() -> dict:
    return TALLY


def _one_clean_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- `dirl config`


def test_good_params_are_accepted(tally, capsys):
    tally["good_tried"] += 1
    assert main(["config", "--params", str(PARAMS)]) == 0
    out, err = capsys.readouterr()
    assert "train:" in out and "Traceback" not in err
    tally["good_accepted"] += 1


@pytest.mark.parametrize("make, key, words", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS])
def test_dirl_config_refuses_naming_the_key(tmp_path, capsys, tally, make, key, words):
    tally["tried"] += 1
    p = hostile_file(tmp_path, make)
    assert main(["config", "--params", str(p)]) == 2
    out, err = capsys.readouterr()
    line = _one_clean_line(err)
    assert out == "" and key in line and words in line and str(p) in line, line
    tally["named"] += 1


# ----------------------------------------------------------------------------- `dirl predict`


def _jpeg_declaring(h: int, w: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to declare h x w."""
    img, _ = composite(11, 24, 24)
    data = bytearray(encode_jpeg(img))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(data)


def _hostile_inputs(root: Path) -> list[Path]:
    img, _ = composite(12, 40, 40)
    root.mkdir()
    files = {
        "bomb.png": bomb_png(),  # a few hundred bytes promising 900 MP
        "bomb.jpg": _jpeg_declaring(60000, 60000),
        "corrupt.jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg",
        "truncated.jpg": encode_jpeg(img)[:-300],
        "empty.png": b"",
        "notes.png": b"name,value\n1,2\n",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "no_images").mkdir()
    return [root / n for n in files] + [root / "missing.jpg", root / "no_images"]


def test_dirl_predict_refuses_every_bad_input_naming_it(tmp_path, capsys, tally):
    import json

    inputs = _hostile_inputs(tmp_path / "in")
    out = tmp_path / "out"
    weights = make_weights(tmp_path / "unet.pt")
    argv = [
        "predict",
        "--params",
        str(PARAMS),
        "--set",
        "model.name=unet",
        "--set",
        "model.input_size=32",
        "--set",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *map(str, inputs),
        "--model",
        str(weights),
        "--out",
        str(out),
    ]
    tally["tried"] += len(inputs)
    before = peak_rss_mb()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert peak_rss_mb() - before < 200  # neither bomb was decoded
    assert e.value.code not in (0, None)
    assert f"{len(inputs)} of {len(inputs)} inputs failed; nothing written" in str(e.value.code)
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no output, no partial or temporary file
    failed = {f["file"]: f["reason"] for f in json.loads((out / "summary.json").read_text())["failed"]}
    for path in inputs:
        if str(path) in failed and failed[str(path)]:
            tally["named"] += 1
    assert set(failed) == {str(p) for p in inputs}
    assert "pixel cap" in failed[str(inputs[0])] and "pixel cap" in failed[str(inputs[1])]


def test_zz_tally(tally, capsys):
    expected = len(HOSTILE_CONFIGS) + 8
    if tally["tried"] != expected or tally["good_tried"] != 1:
        pytest.skip("the tally needs the whole file (run tests/test_hostile_config.py without -k)")
    assert tally["named"] == tally["tried"] and tally["good_accepted"] == tally["good_tried"] == 1
    line = (
        f"hostile configs and predict inputs: tried {tally['tried']} / refused with the key or file named "
        f"{tally['named']} / accepted good {tally['good_accepted']} of {tally['good_tried']}"
    )
    with capsys.disabled():
        print("\n" + line)
