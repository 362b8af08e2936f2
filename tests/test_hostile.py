"""Hostile inputs: every bad item named, nothing lost, no traceback.

Everything is generated here at test time (no data files are committed): an iHarmony4-layout folder seeded with
bad items (empty, unreadable, truncated and corrupt files, missing / garbled / mis-sized / empty masks, a bad
name), items a filter is meant to drop (all-foreground and > 50 % masks) and good-but-odd ones (CMYK, 16-bit,
EXIF-rotated, RGBA, grey, progressive, trailing bytes, non-binary mask, missing or broken real image). It goes
through the real stages (``dirl.stages.ingest`` + ``preprocess`` with a Config loaded from a params.yaml),
from an extracted folder and from archives, damaged archives included; unsafe archives go through
``safe_extract``. Each test adds to the tally that ``tests/conftest.py`` prints at the end of the run:

    hostile inputs: tried N / reported by name N / good items kept M of M / lost 0
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dirl.cli import main
from dirl.config import load_config
from dirl.data.download import UnsafeArchive, safe_extract
from dirl.data.issues import TooManyBadItems
from dirl.data.shards import read_table
from dirl.stages import ingest as ingest_stage
from dirl.stages import preprocess as preprocess_stage
from dirl.workspace import DOWNLOADS
from helpers.builders import UNSAFE_ARCHIVES, corrupt_jpeg_data, make_tar, make_zip, with_exif_orientation
from helpers.paths import PARAMS

H, W = 24, 32  # composite size (rows, columns)


# ---------------------------------------------------------------------------------------------- generated data


def _enc(ext: str, arr: np.ndarray, params: list | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, arr, params or [])
    assert ok
    return buf.tobytes()


def _mask(ratio: float = 0.2, h: int = H, w: int = W) -> np.ndarray:
    flat = np.zeros(h * w, np.uint8)
    flat[: round(ratio * h * w)] = 255
    return flat.reshape(h, w)


def _noise(rng, h: int = H, w: int = W, c: int = 3) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return cv2.GaussianBlur(rng.integers(0, 256, shape, dtype=np.uint8), (3, 3), 1)


def _cmyk_jpeg(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_noise(rng)).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def hostile_tree(seed: int = 0) -> tuple[dict[str, bytes], dict[str, str], dict[str, str], list[str]]:
    """``(files, bad, excluded, good)``: relative path -> bytes of an iHarmony4 folder; bad composite key -> a
    word its reason must hold; key of each composite the <= 50 % filter must leave out -> a word of the reason;
    ids of the composites that must become shard rows."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    good: list[str] = []
    bad: dict[str, str] = {}
    excluded: dict[str, str] = {}
    jpeg = lambda: _enc(".jpg", _noise(rng))  # noqa: E731
    smooth = _enc(".jpg", cv2.GaussianBlur(rng.integers(0, 256, (H * 2, W * 2, 3), dtype=np.uint8), (5, 5), 2))

    def add(
        subset: str,
        image: str,
        composite: bytes | None,
        ext: str = ".jpg",
        mask: bytes | None = None,
        real: bytes | None = b"default",
        k: int = 1,
    ) -> str:
        files[f"{subset}/masks/{image}_1.png"] = mask if mask is not None else _enc(".png", _mask())
        if real == b"default":
            real = jpeg()
        if real is not None:
            files[f"{subset}/real_images/{image}.jpg"] = real
        key = f"{subset}/composite_images/{image}_1_{k}{ext}"
        if composite is not None:
            files[key] = composite
        return key

    def ok(*args, **kw) -> None:
        good.append(Path(add(*args, **kw)).stem)

    # good, or odd but tolerable: all must be kept
    ok("HFlickr", "f101", jpeg())
    ok("HFlickr", "f102", _enc(".jpg", _noise(rng), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]))
    ok("HFlickr", "f103", _cmyk_jpeg(rng))
    ok("HFlickr", "f104", with_exif_orientation(_enc(".jpg", _noise(rng, W, H)), 6))  # stored W x H, shown H x W
    ok("HFlickr", "f105", _enc(".jpg", _noise(rng, c=1)))  # grey JPEG
    ok("HFlickr", "f106", _enc(".png", _noise(rng).astype(np.uint16) * 257), ext=".png")  # 16-bit PNG
    rgba = np.dstack([_noise(rng), np.full((H, W), 128, np.uint8)])
    ok("HFlickr", "f107", _enc(".png", rgba), ext=".png")  # RGBA PNG
    ok("HFlickr", "f108", jpeg() + b"\x00" * 8 + b"camera trailer")  # bytes after the end-of-image marker
    soft = _mask().astype(np.float32)
    ok("HFlickr", "f109", jpeg(), mask=_enc(".png", cv2.GaussianBlur(soft, (3, 3), 1).astype(np.uint8)))
    ok("HFlickr", "f110", jpeg(), real=None)  # no real image: noted
    ok("HFlickr", "f111", jpeg(), real=b"")  # an empty real image: noted, stored without it
    ok("HFlickr", "f112", _enc(".png", _noise(rng, c=1)), ext=".png")  # grey PNG
    ok("HFlickr", "f113", jpeg())
    ok("HFlickr", "f113", jpeg(), k=2)  # a second composite sharing f113's mask
    ok("HCOCO", "c201", jpeg(), real=None)

    # bad: each must be named in issues.json with its reason
    bad[add("HFlickr", "f301", b"")] = "unreadable"  # zero bytes
    key = add("HFlickr", "f302", jpeg())
    del files["HFlickr/masks/f302_1.png"]
    bad[key] = "missing mask"
    bad[add("HFlickr", "f303", jpeg(), mask=b"\x89PNG garbage")] = "mask HFlickr/masks/f303_1.png"
    files["HFlickr/composite_images/badname.jpg"] = jpeg()
    bad["HFlickr/composite_images/badname.jpg"] = "<image>_<fg>_<k>"
    bad[add("HFlickr", "f304", b"<html>this share link has expired</html>")] = "unreadable"
    bad[add("HFlickr", "f305", jpeg()[:-40])] = "truncated JPEG"
    sos = smooth.rfind(b"\xff\xda")
    bad[
        add(
            "HFlickr",
            "f306",
            smooth[: (sos + len(smooth)) // 2] + b"\xff\xd9",
            mask=_enc(".png", _mask(h=2 * H, w=2 * W)),
        )
    ] = "premature end of data segment"
    bad[add("HFlickr", "f307", corrupt_jpeg_data(smooth), mask=_enc(".png", _mask(h=2 * H, w=2 * W)))] = (
        "corrupt JPEG data"
    )
    png = _enc(".png", _noise(rng))
    bad[add("HFlickr", "f308", png[: len(png) // 2], ext=".png")] = "not a readable image"  # truncated PNG
    bad[add("HFlickr", "f309", jpeg(), mask=_enc(".png", _mask(h=H + 8)))] = "mask is"  # another size
    bad[add("HFlickr", "f310", jpeg(), mask=_enc(".png", _mask(0.0)))] = "empty mask"
    mpng = _enc(".png", _mask())
    bad[add("HFlickr", "f311", jpeg(), mask=mpng[: len(mpng) - 30])] = "f311_1.png"  # mask cut short

    # left out on purpose by the <= 50 % foreground filter: named as exclusions (notes), not as bad items
    excluded[add("HFlickr", "f401", jpeg(), mask=_enc(".png", _mask(1.0)))] = "covers 100.0%"
    excluded[add("HCOCO", "c402", jpeg(), mask=_enc(".png", _mask(0.7)), real=None)] = "covers 70"
    return files, bad, excluded, good


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _item_id(key: str) -> str:
    return Path(key).stem


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: bytes and modification time (so a rewrite with equal bytes shows too)."""
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def configure(ws: Path, **data) -> Path:
    """Write ``ws/params.yaml``: the real one, data section updated with ``data`` (``iharmony4_x`` = nested)."""
    params = yaml.safe_load(PARAMS.read_text())
    params["data"].update(stored_size=64)
    params["cluster"]["data_workers"] = 1
    for key, value in data.items():
        if key.startswith("iharmony4_"):
            params["data"]["iharmony4"][key[len("iharmony4_") :]] = value
        else:
            params["data"][key] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    return ws / "params.yaml"


def report(stage: str) -> dict:
    return json.loads((Path("results") / stage / "issues.json").read_text())


def named(rep: dict, key: str) -> list[str]:
    """Reasons ``rep`` gives for the item ``key`` (under its key or its id)."""
    return [i["reason"] for i in rep["issues"] if i["item"] in (key, _item_id(key))]


def tally(t: dict, tried: int = 0, reported: int = 0, good: int = 0, kept: int = 0, lost: int = 0) -> None:
    for k, v in dict(tried=tried, reported=reported, good=good, kept=kept, lost=lost).items():
        t[k] += v


# ---------------------------------------------------------------------------------------------- the folder


def test_hostile_folder_every_bad_item_named_every_good_item_kept(workspace, capfd, hostile_tally):
    files, bad, excluded, good = hostile_tree()
    src = write_tree(workspace / "ihd", files)
    composites = sorted(p.relative_to(src).as_posix() for p in src.glob("*/composite_images/*"))
    total = len(composites)
    assert total == len(bad) + len(excluded) + len(good)
    frac = len(bad) / total
    # the rule passes exactly when every item seen is counted (scan rejects and filtered items too)
    cfg = load_config(
        configure(
            workspace,
            source="iharmony4",
            iharmony4_extracted_dir=str(src),
            iharmony4_split="le50",
            max_bad_fraction=frac + 0.001,
        )
    )
    ingest_stage.run(cfg)
    ing = report("ingest")
    scan_bad = {k for k in bad if named(ing, k)}
    assert ing["total"] == total and ing["bad"] == len(scan_bad) == 5 and ing["passed"] is True

    preprocess_stage.run(cfg)
    rep = report("preprocess")
    assert (rep["total"], rep["bad"], rep["excluded"]) == (total, len(bad), len(excluded))
    assert rep["fraction"] == pytest.approx(frac) and rep["passed"] is True
    reported = 0
    for key, word in bad.items():
        reasons = named(rep, key)
        assert reasons and any(word in r for r in reasons), (key, reasons)
        reported += 1
    notes = {n["item"]: n["reason"] for n in rep["notes"] if n.get("excluded")}
    for key, word in excluded.items():
        assert word in notes.get(key, ""), (key, notes)
        reported += 1
    assert {n["item"] for n in rep["notes"] if not n.get("excluded")} >= {
        "HFlickr/composite_images/f110_1_1.jpg",
        "HFlickr/composite_images/f111_1_1.jpg",
        "f109_1_1",
    }
    rows = read_table(Path("data/shards")).column("id").to_pylist()
    assert sorted(rows) == sorted(good)  # every good item stored, no bad one
    accounted = set(rows) | {_item_id(k) for k in bad} | {_item_id(k) for k in excluded}
    lost = sorted(_item_id(c) for c in composites if _item_id(c) not in accounted)
    assert lost == []
    err = capfd.readouterr().err
    assert not re.search(r"^(Corrupt JPEG|Premature end|libpng|\[ WARN)", err, re.M), err  # nothing leaked raw
    assert "Traceback" not in err
    for key in bad:  # 12 bad items (<= 20): the console names every one
        assert _item_id(key) in err, key
    tally(
        hostile_tally, tried=len(bad) + len(excluded), reported=reported, good=len(good), kept=len(rows), lost=len(lost)
    )

    # the same folder with a stricter rule: the preprocess stage fails, writes the full report, keeps data/shards
    before = snapshot(Path("data/shards"))
    cfg = load_config(
        configure(workspace, source="iharmony4", iharmony4_extracted_dir=str(src), max_bad_fraction=frac - 0.01)
    )
    with pytest.raises(TooManyBadItems, match=re.escape(str(Path("results/preprocess/issues.json")))):
        preprocess_stage.run(cfg)
    rep = report("preprocess")
    assert rep["passed"] is False and rep["bad"] == len(bad) and "max_bad_fraction" in rep["error"]
    assert all(named(rep, k) for k in bad)
    assert snapshot(Path("data/shards")) == before
    err = capfd.readouterr().err
    assert all(_item_id(k) in err for k in bad)


def test_failed_ingest_keeps_previous_raw_and_writes_the_full_report(workspace, capsys, hostile_tally):
    """Archives through the ingest stage: a good one, then one with 25 bad items of 31 (too many)."""
    files, _, _, _ = hostile_tree(seed=1)
    keep = {k: v for k, v in files.items() if "/f1" in k or "/c2" in k}  # the good items only
    (workspace / "src").mkdir()
    (workspace / "src" / "good.tar.gz").write_bytes(make_tar(keep, prefix="iHarmony4/"))
    configure(
        workspace,
        source="iharmony4",
        iharmony4_archives=[str(workspace / "src" / "good.tar.gz")],
        iharmony4_lock_file="lock.json",
        max_bad_fraction=0.05,
    )
    assert main(["data", "ingest"]) == 0
    lock = json.loads(Path("lock.json").read_text())["archives"]
    assert set(lock) == {"good.tar.gz"}  # recorded once it had extracted
    raw = snapshot(Path("data/raw"))
    index = json.loads(Path("data/raw/index.json").read_text())
    assert index["roots"] == [str(Path("data/raw/iharmony4/good/iHarmony4").resolve())]
    assert Path(index["roots"][0]).is_dir()

    bad_tree = dict(keep)
    for i in range(25):
        bad_tree[f"HFlickr/composite_images/f9{i:02d}_1_1.jpg"] = b""  # zero bytes
        bad_tree[f"HFlickr/masks/f9{i:02d}_1.png"] = keep["HFlickr/masks/f101_1.png"]
    (workspace / "src" / "many_bad.zip").write_bytes(make_zip(bad_tree))
    configure(
        workspace,
        source="iharmony4",
        iharmony4_archives=[str(workspace / "src" / "many_bad.zip")],
        iharmony4_lock_file="lock.json",
        max_bad_fraction=0.05,
    )
    capsys.readouterr()
    assert main(["data", "ingest"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: TooManyBadItems: [ingest] 25 of ") and "results/ingest/issues.json" in last
    assert "Traceback" not in err
    listed = [f"f9{i:02d}_1_1.jpg" for i in range(25)]
    assert sum(name in err.replace(last, "") for name in listed) == 20  # the console names the first 20 ...
    assert "and 5 more bad item(s): all in results/ingest/issues.json" in err  # ... and where the rest are
    rep = report("ingest")
    assert rep["bad"] == 25 and rep["total"] == 25 + len([k for k in keep if "composite_images" in k])
    assert all(any(n in i["item"] for i in rep["issues"]) for n in listed)  # the report holds all 25
    assert snapshot(Path("data/raw")) == raw  # data/raw, its index.json included, exactly as it was
    assert not list(Path("data").glob(".raw.*"))  # no staging folder left behind
    tally(hostile_tally, tried=25, reported=sum(any(n in i["item"] for i in rep["issues"]) for n in listed))


def test_stale_report_is_removed_when_a_stage_fails_early(workspace):
    configure(workspace)
    stale = Path("results/preprocess/issues.json")
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"stage": "preprocess", "total": 99, "bad": 0, "issues": []}))
    with pytest.raises(FileNotFoundError, match="dvc repro ingest"):
        preprocess_stage.run(load_config("params.yaml"))
    rep = report("preprocess")
    assert rep["total"] == 0 and "FileNotFoundError" in rep["error"]  # this run's report, not the stale one


def test_verify_with_nothing_to_verify_fails(workspace, capsys):
    configure(workspace)
    assert main(["data", "verify"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to verify" in err[0] and "dvc repro preprocess" in err[0]


# ---------------------------------------------------------------------------------------------- archives


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_corrupt_archives_one_line_nothing_kept_never_pinned(workspace, capsys, hostile_tally):
    files, _, _, _ = hostile_tree(seed=2)
    keep = {k: v for k, v in files.items() if "/f1" in k}
    tgz = make_tar(keep)
    stored = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        for name, data in keep.items():
            zf.writestr(name, data)
    zipped = stored.getvalue()
    member = keep["HFlickr/composite_images/f101_1_1.jpg"]
    corrupt = {  # archive name -> (damaged bytes, the intact ones)
        "bad_crc.zip": (_flip(zipped, zipped.index(member) + len(member) // 2), zipped),
        "half_download.tar.gz": (tgz[: len(tgz) // 2], tgz),
        "one_flipped_byte.tar.gz": (_flip(tgz, len(tgz) // 2), tgz),
    }
    src = workspace / "src"
    src.mkdir()
    (src / "first.tar.gz").write_bytes(tgz)
    configure(
        workspace,
        source="iharmony4",
        iharmony4_archives=[str(src / "first.tar.gz")],
        iharmony4_lock_file="lock.json",
        max_bad_fraction=0.0,
    )
    assert main(["data", "ingest"]) == 0
    raw = snapshot(Path("data/raw"))
    reported = 0
    for name, (damaged, intact) in corrupt.items():
        (src / name).write_bytes(damaged)
        configure(
            workspace,
            source="iharmony4",
            iharmony4_archives=[str(src / name)],
            iharmony4_lock_file="lock.json",
            max_bad_fraction=0.0,
        )
        capsys.readouterr()
        assert main(["data", "ingest"]) == 1, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: CorruptArchive: archive ") and name in err[0], err
        assert "rerun" in err[0]
        reported += 1
        assert name not in json.loads(Path("lock.json").read_text())["archives"]  # never the reference
        assert snapshot(Path("data/raw")) == raw  # nothing half-extracted, nothing replaced
        assert not list(Path("data").glob(".raw.*")) and not (DOWNLOADS / name).exists()
        (src / name).write_bytes(intact)  # the real thing: accepted, and only now recorded
        assert main(["data", "ingest"]) == 0, name
        assert name in json.loads(Path("lock.json").read_text())["archives"]
        assert (Path("data/raw/iharmony4") / name.split(".")[0] / "HFlickr/composite_images/f101_1_1.jpg").is_file()
        raw = snapshot(Path("data/raw"))
    tally(hostile_tally, tried=len(corrupt), reported=reported)


def _absurd_tar() -> bytes:
    """A .tar.gz whose one member declares 300 GiB (GNU base-256 size field) and holds nothing."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("huge.bin")
        info.size = 300 * 2**30
        tf.addfile(info)
    return buf.getvalue()


def _absurd_zip() -> bytes:
    """A zip whose central directory declares 4 GiB - 1 uncompressed for a 7-byte member."""
    data = bytearray(make_zip({"huge.bin": b"payload"}))
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (2**32 - 1).to_bytes(4, "little")
    return bytes(data)


UNSAFE = {
    **UNSAFE_ARCHIVES,
    "tar-absurd-size": ("tar.gz", _absurd_tar, "huge.bin"),
    "zip-absurd-size": ("zip", _absurd_zip, "huge.bin"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archive_is_refused_by_name(tmp_path, case, hostile_tally):
    kind, build, expect = UNSAFE[case]
    archive = tmp_path / f"evil.{kind}"
    archive.write_bytes(build())
    limit = {"max_total_bytes": 1 << 30} if case == "zip-absurd-size" else {}
    with pytest.raises(UnsafeArchive, match=re.escape(expect)) as e:
        safe_extract(archive, tmp_path / "out" / "ds", **limit)
    assert str(archive) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name, "out"]
    assert list((tmp_path / "out").iterdir()) == [] and not Path("/tmp/abs_evil.txt").exists()
    tally(hostile_tally, tried=1, reported=1)
