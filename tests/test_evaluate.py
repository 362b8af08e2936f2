"""Evaluation stage: metrics beside the centred prior, CSVs, figures, MLflow logging, comparison table.

The builders (composites, shard folders, weights, configs, training runs) are in ``tests/helpers/lifecycle.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dirl.data.images import encode_jpeg, encode_png, resize_mask
from dirl.lifecycle.evaluate import compare
from dirl.metrics import baseline_metrics
from dirl.stages import evaluate as evaluate_stage
from helpers.lifecycle import composite, make_cfg, make_ihd, make_training_run, make_weights, make_workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- builders


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A project-like folder (data/synth, data/shards) as the current directory."""
    monkeypatch.chdir(tmp_path)
    make_workspace(tmp_path)
    return tmp_path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- tests


def test_evaluate_stage_outputs_beside_centre_prior_and_logged(workspace):
    import mlflow

    ihd = make_ihd(workspace / "sets" / "ihd_mini")
    cfg = make_cfg(workspace, size=64, name="dirl_lite", **{"evaluate.extra_sets": [str(ihd), str(workspace / "nope")]})
    train = workspace / "results" / "train"
    make_weights(train / "model.pt", "dirl_lite", 64, seed=1)
    run_id = make_training_run(cfg, train)

    metrics = evaluate_stage.run(cfg, model_ref=str(train / "model.pt"), out_dir="results/evaluate")
    out = workspace / "results" / "evaluate"
    assert json.loads((out / "scores.json").read_text()) == metrics
    # what `dvc metrics show` reads: the model and the prior in two small files with the same keys
    small = {name: json.loads((out / name).read_text()) for name in ("metrics.json", "prior.json")}
    assert small["metrics.json"]["test"] == {k: metrics["test"]["model"][k] for k in ("n", "AP", "F1", "IoU")}
    assert small["prior.json"]["test"] == {k: metrics["test"]["centre_prior"][k] for k in ("n", "AP", "F1", "IoU")}
    assert set(metrics) == {"test", "ihd_mini"}  # the absent extra set is skipped with a note
    assert "does not exist" in " ".join(json.loads((out / "info.json").read_text())["notes"])
    assert metrics["test"]["model"]["n"] == metrics["test"]["centre_prior"]["n"] == 6  # 4 synthesized + 2 composite
    assert metrics["ihd_mini"]["model"]["n"] == 3 and set(metrics["ihd_mini"]["model"]["subsets"]) == {"HFlickr"}

    # the centred prior is the same baseline that dirl.metrics computes on the same masks at the model size
    from dirl.lifecycle.evaluate import shard_set

    test = shard_set(["data/synth", "data/shards"], "test")
    gts = np.stack([resize_mask(test.load(i)[1], 64) for i in range(len(test))])[:, None]
    expect = baseline_metrics(gts, test.ids)
    for k in ("AP", "F1", "IoU"):
        assert metrics["test"]["centre_prior"][k] == pytest.approx(expect[k], abs=1e-9)

    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 9 and {r["set"] for r in rows} == {"test", "ihd_mini"}
    test_rows = [r for r in rows if r["set"] == "test"]
    mean_iou = np.mean([float(r["iou"]) for r in test_rows]) * 100
    assert mean_iou == pytest.approx(metrics["test"]["model"]["IoU"], abs=1e-3)
    pr = read_csv(out / "pr_curve.csv")
    assert list(pr[0]) == ["threshold", "precision", "recall"] and len(pr) == 101
    recall = [float(r["recall"]) for r in pr]
    assert recall[0] == pytest.approx(1.0) and all(a >= b - 1e-12 for a, b in zip(recall, recall[1:]))
    grid, mda = cv2.imread(str(out / "grid.png")), cv2.imread(str(out / "mda.png"))
    assert grid is not None and mda is not None
    assert mda.shape[1] > grid.shape[1]  # 8 columns (image, GT, A0..A4, final) against 4
    assert cv2.imread(str(out / "pr_curve.png")) is not None  # the PR curves as a picture too
    assert (out / "config.yaml").is_file()

    # the evaluation is a run of its own, tagged with the training run, which it leaves as it was
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    eval_id = json.loads((out / "info.json").read_text())["mlflow"]["evaluation_run_id"]
    assert eval_id and eval_id != run_id and not client.get_run(run_id).data.metrics
    run = client.get_run(eval_id)
    assert run.data.tags["dirl.train_run_id"] == run_id and run.data.tags["stage"] == "evaluate"
    assert run.info.status == "FINISHED" and "centred prior" in run.data.tags["mlflow.note.content"]
    logged = run.data.metrics
    assert logged["test/IoU"] == pytest.approx(metrics["test"]["model"]["IoU"])
    assert logged["ihd_mini/prior_AP"] == pytest.approx(metrics["ihd_mini"]["centre_prior"]["AP"])
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"test", "ihd_mini"}
    names = {f.path for f in client.list_artifacts(eval_id, "evaluate")}
    assert {
        "evaluate/metrics.json",
        "evaluate/grid.png",
        "evaluate/mda.png",
        "evaluate/pr_curve.csv",
        "evaluate/pr_curve.png",
    } <= names
    assert not client.list_artifacts(run_id)


def test_model_without_attention_maps_gets_note_figure_and_no_run(workspace):
    cfg = make_cfg(workspace)
    make_weights(workspace / "w" / "unet.pt")
    metrics = evaluate_stage.run(cfg, model_ref=str(workspace / "w" / "unet.pt"), out_dir="out")
    info = json.loads((workspace / "out" / "info.json").read_text())
    assert any("no attention maps" in n for n in info["notes"]) and info["mlflow"]["train_run_id"] is None
    assert cv2.imread(str(workspace / "out" / "mda.png")) is not None
    assert set(metrics) == {"test"}


def test_flat_model_scores_zero_iou_and_evaluate_model_matches_accumulator(workspace):
    from dirl.lifecycle.evaluate import evaluate_model, shard_set
    from dirl.weights import load_weights

    model, _ = load_weights(make_weights(workspace / "flat.pt", constant=True))
    test = shard_set(["data/synth", "data/shards"], "test")
    metrics, per_image, pr = evaluate_model(model, test.batches(32, 4))
    assert metrics["n"] == 6 and metrics["IoU"] == 0.0 and metrics["F1"] == 0.0  # a flat map selects nothing
    # AP of a flat map = the foreground fraction of each image (one threshold: precision = prevalence)
    gts = [resize_mask(test.load(i)[1], 32) for i in range(len(test))]
    assert metrics["AP"] == pytest.approx(np.mean([g.mean() for g in gts]) * 100, rel=1e-6)
    assert [r["id"] for r in per_image] == test.ids and len(pr) == 101


def test_no_composites_is_a_clear_error(tmp_path, monkeypatch):
    from dirl.lifecycle.evaluate import EvaluationError

    monkeypatch.chdir(tmp_path)
    make_weights(tmp_path / "m.pt")
    with pytest.raises(EvaluationError, match="no 'test' composites in data/synth, data/shards"):
        evaluate_stage.run(make_cfg(tmp_path), model_ref=str(tmp_path / "m.pt"), out_dir="out")


def test_compare_table_has_every_model_and_the_prior(workspace):
    cfg = make_cfg(workspace)
    good, flat = make_weights(workspace / "good.pt"), make_weights(workspace / "flat.pt", constant=True)
    res = compare(cfg, [str(good), str(flat)], out_dir="cmp")
    methods = [r["method"] for r in res["rows"]]
    assert methods == ["good.pt (unet)", "flat.pt (unet)", "centre prior"]
    assert res["rows"][1]["IoU"] == 0.0 and all(r["n"] == 6 for r in res["rows"])
    md = (workspace / "cmp" / "comparison.md").read_text()
    assert "| test | centre prior | 32 | 6 |" in md and "flat.pt (unet)" in md
    assert len(read_csv(workspace / "cmp" / "comparison.csv")) == 3
    assert cv2.imread(str(workspace / "cmp" / "grid.png")) is not None


def test_real_ihd_dev_set_beside_centre_prior(shared_data, tmp_path):
    """The genuine iHarmony4 composites of ../shared/data/ihd_dev as an extra set."""
    from dirl.lifecycle.evaluate import evaluate_set, ihd_set
    from dirl.weights import load_weights

    root = shared_data / "ihd_dev"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    s = ihd_set(root)
    assert s.name == "ihd_dev" and len(s) == 31
    img, mask = s.load(s.subsets.index("HAdobe5k"))
    assert img.shape[:2] == mask.shape and img.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    model, _ = load_weights(make_weights(tmp_path / "flat.pt", constant=True))
    res = evaluate_set(model, s, 32, 8, progress=False)
    assert set(res["model"]["subsets"]) == {"HAdobe5k", "HCOCO", "HFlickr"}
    assert res["model"]["n"] == res["centre_prior"]["n"] == 31 and res["model"]["IoU"] == 0.0
    assert 0.0 < res["centre_prior"]["IoU"] < 100.0  # the prior finds some of the (mostly central) regions


# ----------------------------------------------------------------------------- test composites stored at original size


def preprocessed_originals(root: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """``root/data/shards`` built by ``dirl.data.preprocess`` (stored size 64) from JPEG files written here:
    two test composites (one 3-pixel foreground in 1000 x 800) and a train one. Returns it and {id: (jpg, png)}."""
    from dirl.data.preprocess import write_shards

    files = {}
    for seed, (name, (h, w), split) in enumerate(
        (("c1_1_1", (300, 420), "test"), ("c2_1_1", (1000, 800), "test"), ("c3_1_1", (200, 200), "train"))
    ):
        img, mask = composite(700 + seed, h, w)
        if name == "c2_1_1":
            mask[:] = 0
            mask[500, 400:403] = 1  # 3 pixels: vanish at any input size of a few hundred pixels or less
        jpg, png = root / "src" / f"{name}.jpg", root / "src" / f"{name}.png"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(jpg), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(png), mask * 255)
        files[name] = (jpg, png, split)
    items = [{"id": k, "subset": "HCOCO", "split": s, "composite": j, "mask": m} for k, (j, m, s) in files.items()]
    out = root / "data" / "shards"
    manifest = write_shards(items, out, 64, workers=1, max_bad_fraction=0.0, progress=False)
    assert manifest["splits"] == {"test": 2, "train": 1}
    return out, {k: v[:2] for k, v in files.items() if v[2] == "test"}


def test_eval_input_of_a_test_row_is_one_resize_of_the_original(tmp_path):
    from dirl.data.images import decode_image, decode_mask, resize_image
    from dirl.data.transforms import normalize
    from dirl.lifecycle.evaluate import shard_set

    shards, files = preprocessed_originals(tmp_path)
    s = shard_set([shards], "test")
    assert s.ids == ["c1_1_1", "c2_1_1"]
    size = 48
    batch = next(s.batches(size, 2))
    for i, name in enumerate(s.ids):
        jpg, png = files[name]
        orig = decode_image(jpg)
        orig_mask, _ = decode_mask(png)
        img, mask = s.item(i, size)
        np.testing.assert_array_equal(img, resize_image(orig, size))  # original -> input size, nothing between
        np.testing.assert_array_equal(mask, resize_mask(orig_mask, size))
        np.testing.assert_array_equal(batch["image"][i].numpy(), normalize(resize_image(orig, size)))
        twice = resize_image(decode_image(encode_jpeg(resize_image(orig, 64))), size)  # the former 64-px JPEG path
        assert not np.array_equal(img, twice)


def test_tiny_test_foreground_is_scored_like_the_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    preprocessed_originals(tmp_path)
    cfg = make_cfg(tmp_path, size=32)
    make_weights(tmp_path / "w" / "unet.pt")
    metrics = evaluate_stage.run(cfg, model_ref=str(tmp_path / "w" / "unet.pt"), out_dir="out", log_mlflow=False)
    assert metrics["test"]["model"]["n"] == metrics["test"]["centre_prior"]["n"] == 2  # nothing dropped
    rows = {r["id"]: r for r in read_csv(tmp_path / "out" / "per_image.csv")}
    assert set(rows) == {"c1_1_1", "c2_1_1"}
    tiny = {k: float(v) for k, v in rows["c2_1_1"].items() if k not in ("set", "id", "subset")}
    assert all(np.isfinite(v) for v in tiny.values())
    # its foreground vanishes at 32 x 32: an all-negative GT, AP 0 as scikit-learn >= 1.1, F1 = IoU = 0
    assert tiny == {"ap": 0.0, "f1": 0.0, "iou": 0.0, "prior_ap": 0.0, "prior_f1": 0.0, "prior_iou": 0.0}
    other = float(rows["c1_1_1"]["ap"])
    assert metrics["test"]["model"]["AP"] == pytest.approx((other + 0.0) / 2 * 100, abs=1e-3)  # the 0 is averaged in


def test_mismatch_probe_scores_the_composite_and_its_unaltered_photo(tmp_path):
    """benchmarks/mismatch_probe.py: rows without a real photo are left out; a row whose real photo is the composite
    itself scores the same on both lines, one whose region was changed scores differently; composites on a foreign
    outline (ids ``_x<k>``) and on the photo's own object get lines of their own."""
    import importlib.util

    from dirl.data.shards import ShardWriter, write_manifest

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mismatch_probe.py"
    spec = importlib.util.spec_from_file_location("mismatch_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    def table(real_is_composite: bool) -> dict[str, list[float]]:
        synth = tmp_path / ("same" if real_is_composite else "changed")
        with ShardWriter(synth, "test") as w:
            for i in range(6):
                img, mask = composite(i, 48, 48)
                shifted = np.where(mask[..., None] == 1, 255 - img, img).astype(np.uint8)
                w.write(
                    {
                        "id": f"p{i}_x0" if i % 2 else f"p{i}_i0", "subset": "unit", "split": "test",
                        "image": encode_jpeg(img if real_is_composite else shifted), "mask": encode_png(mask),
                        "real": encode_jpeg(img) if i < 4 else None,
                        "orig_h": 48, "orig_w": 48, "height": 48, "width": 48, "fg_ratio": float(mask.mean()),
                        "source": "synthesized", "synth_method": "reinhard", "ref_id": None,
                    }
                )  # fmt: skip
        write_manifest(synth, w.shards, {})
        out = probe.probe(str(weights), synth, make_cfg(tmp_path, size=48))
        rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line]
        return {(r[0].strip(), r[1].strip()): [float(v) for v in r[2:] if v.strip()] for r in rows[1:]}

    weights = make_weights(tmp_path / "model.pt", "unet", 48, seed=2)
    by_group = table(True), table(False)
    same, changed = ({k[1]: v for k, v in t.items() if k[0] == "all"} for t in by_group)
    assert same["composite"][0] == same["unaltered photo"][0] == same["centred prior"][0] == 4  # n: rows with a photo
    assert by_group[0][("foreign outlines", "composite")][0] == by_group[0][("the photo's object", "composite")][0] == 2
    assert same["composite"][1:] == same["unaltered photo"][1:]  # the same input: the same IoU and probabilities
    assert changed["composite"][1:] != changed["unaltered photo"][1:]
    assert changed["centred prior"] == same["centred prior"]  # the prior sees only the masks


def test_transfer_report_groups_by_method_kind_and_subset(tmp_path):
    """benchmarks/transfer_report.py: the synthesized split per method, with the composites on the photo's own object
    and on a foreign outline (ids ``_x<k>``) each totalled, and an extra set per subset; every figure the mean of
    per_image.csv's rows beside the prior's."""
    import importlib.util

    from dirl.data.shards import ShardWriter, write_manifest

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer_report.py"
    spec = importlib.util.spec_from_file_location("transfer_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)

    ids = {"p1_i0": "reinhard", "p1_x0": "reinhard", "p2_i0": "retouch", "p2_x1": "retouch"}
    with ShardWriter(tmp_path / "data/synth", "test") as w:
        for i, (cid, method) in enumerate(ids.items()):
            img, mask = composite(i, 16, 16)
            w.write(
                {
                    "id": cid, "subset": "unit", "split": "test", "image": encode_jpeg(img), "mask": encode_png(mask),
                    "real": None, "orig_h": 16, "orig_w": 16, "height": 16, "width": 16, "fg_ratio": 0.2,
                    "source": "synthesized", "synth_method": method, "ref_id": None,
                }
            )  # fmt: skip
    write_manifest(tmp_path / "data/synth", w.shards, {})
    (tmp_path / "results/evaluate").mkdir(parents=True)
    with (tmp_path / "results/evaluate/per_image.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["set", "id", "subset", "iou", "prior_iou"])
        for k, cid in enumerate(ids):
            out.writerow(["test", cid, "unit", 0.1 * (k + 1), 0.1])  # 0.1, 0.2, 0.3, 0.4
        out.writerow(["ihd_dev", "c1", "HCOCO", 0.5, 0.3])
    rows = [line.strip("|").split("|") for line in report.report(tmp_path).splitlines()[2:]]
    got = {(r[0].strip(), r[1].strip()): (int(r[2]), float(r[3]), float(r[4])) for r in rows}
    assert got[("test", "all")] == (4, 25.0, 10.0)
    assert got[("test", "all on the photo's object")] == (2, 20.0, 10.0)  # p1_i0, p2_i0
    assert got[("test", "all on foreign outlines")] == (2, 30.0, 10.0)  # p1_x0, p2_x1
    assert got[("test", "reinhard (foreign)")] == (1, 20.0, 10.0) and got[("test", "retouch")] == (1, 30.0, 10.0)
    assert got[("ihd_dev", "HCOCO")] == (1, 50.0, 30.0)
