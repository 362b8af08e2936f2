"""`dvc repro` of the iHarmony4 profiles on an iHarmony4-layout archive, to a registered model.

The archive is built at test time (the four subset folders with real_images/, a 4000 x 3000 HAdobe5k test photo,
le50-style lists with a malformed line and photos in no list) and served by a real HTTP server on loopback. The
profile is applied as a user applies it (`make profile` = `write_profile`), then only CPU-scale overrides: the
tiny model at 64 px with random init, one short epoch, one local CPU worker.
"""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from helpers.builders import ihd_archive_tree, make_tar
from helpers.repo import BIN, base_env, make_repo, ran
from helpers.repo import sh as run

EVERY_STAGE = {"ingest", "preprocess", "synthesize", "tune", "train", "evaluate", "register"}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """``(url, lists)``: the archive served over HTTP on 127.0.0.1, and its train/test list lines."""
    served = tmp_path_factory.mktemp("served")
    files, lists = ihd_archive_tree()
    (served / "iHarmony4.tar.gz").write_bytes(make_tar(files, prefix="iHarmony4/"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/iHarmony4.tar.gz", lists
    finally:
        httpd.shutdown()
        httpd.server_close()


def cpu_overrides(path: Path, url: str, lists_dir: Path) -> Path:
    """The overrides a 2-core machine needs on top of an iHarmony4 profile, and the user's data locations."""
    path.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "stored_size": 64,
                    "iharmony4": {
                        "archives": [url],
                        "train_list": str(lists_dir / "le50_train.txt"),
                        "test_list": str(lists_dir / "le50_test.txt"),
                    },
                },
                "model": {"name": "dirl_tiny", "input_size": 64, "pretrained": "", "pretrained_sha256": ""},
                "train": {"epochs": 1, "max_steps_per_epoch": 2},
                "tune": {"num_samples": 1, "epochs": 1, "max_steps_per_epoch": 2, "grace_period": 1},
                "cluster": {
                    "address": "",
                    "num_workers": 1,
                    "min_workers": 0,
                    "cpus_per_worker": 0.5,
                    "use_gpu": False,
                    "data_workers": 1,
                    "max_concurrent_trials": 1,
                },
            },
            sort_keys=False,
        )
    )
    return path


def repro(tmp_path_factory, archive, profile: str) -> tuple[Path, str]:
    url, lists = archive
    where = tmp_path_factory.mktemp(profile)
    for split, lines in lists.items():
        (where / f"le50_{split}.txt").write_text("\n".join(lines) + "\n")
    repo = make_repo(where / "dirl", profile, cpu_overrides(where / "cpu.yaml", url, where))
    log = run(BIN / "dvc", "repro", cwd=repo, env=base_env(DIRL_PROGRESS_EVERY="0"), timeout=1200)
    return repo, log


def _rows_by_split_and_source(folder: Path) -> dict[tuple[str, str], int]:
    from dirl.data.shards import read_table

    table = read_table(folder, columns=["split", "source"]).to_pylist()
    out: dict[tuple[str, str], int] = {}
    for row in table:
        out[(row["split"], row["source"])] = out.get((row["split"], row["source"]), 0) + 1
    return out


def _listed(lines: list[str]) -> set[str]:
    return {ln for ln in lines if "/composite_images/" in ln}


def _check_registered_model_has_test_metrics(repo: Path) -> None:
    import mlflow

    model = json.loads((repo / "results/register/model.json").read_text())
    assert model["model_uri"].startswith("models:/")
    run_info = json.loads((repo / "results/train/run.json").read_text())
    client = mlflow.MlflowClient(run_info["tracking_uri"])
    logged = client.get_logged_model(run_info["model_id"])
    keys = {m.key.replace("/", "_") for m in logged.metrics}
    assert {"test_IoU", "test_AP", "test_F1"} <= keys, sorted(keys)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, archive):
    return repro(tmp_path_factory, archive, "iharmony4-reference")


def test_reference_profile_reaches_register(reference_run, archive):
    repo, log = reference_run
    assert ran(log) == EVERY_STAGE
    _check_registered_model_has_test_metrics(repo)
    # the reference: no search, no synthesized rows; synthesize said so in one line and wrote an empty set
    assert "[synthesize] 0 composites" in log
    assert json.loads((repo / "data/synth/manifest.json").read_text())["rows"] == 0
    assert json.loads((repo / "results/tune/summary.json").read_text()).get("skipped")


def test_reference_split_follows_the_lists(reference_run, archive):
    repo, _ = reference_run
    _, lists = archive
    train, test = _listed(lists["train"]), _listed(lists["test"])
    rows = _rows_by_split_and_source(repo / "data/shards")
    assert rows.get(("test", "composite")) == len(test)
    assert rows.get(("train", "composite"), 0) + rows.get(("val", "composite"), 0) == len(train)
    assert rows.get(("val", "composite"), 0) >= 1
    issues = json.loads((repo / "results/preprocess/issues.json").read_text())
    text = json.dumps(issues)
    assert "not a composite line" in text  # the malformed line is named, and skipped
    assert text.count("not in any split list") == 8  # one photo per subset, two composites each, left out


def test_reference_keeps_aspect_and_test_originals(reference_run):
    from dirl.data.shards import read_table

    repo, _ = reference_run
    rows = read_table(repo / "data/shards", columns=["id", "split", "height", "width", "orig_h", "orig_w"]).to_pylist()
    big = next(r for r in rows if (r["orig_h"], r["orig_w"]) == (3000, 4000))
    assert big["split"] == "test" and (big["height"], big["width"]) == (3000, 4000)  # stored at original size
    for r in rows:
        if r["split"] != "test":
            assert min(r["height"], r["width"]) == 64
            assert abs(r["width"] / r["height"] - r["orig_w"] / r["orig_h"]) < 0.05  # aspect kept


@pytest.mark.slow
def test_search_profile_reaches_register_with_synthesis_in_train_only(tmp_path_factory, archive):
    import mlflow

    repo, log = repro(tmp_path_factory, archive, "iharmony4-search")
    assert ran(log) == EVERY_STAGE
    _check_registered_model_has_test_metrics(repo)
    synth = _rows_by_split_and_source(repo / "data/synth")
    assert synth and set(synth) == {("train", "synthesized")}, synth
    run_info = json.loads((repo / "results/train/run.json").read_text())
    inputs = mlflow.MlflowClient(run_info["tracking_uri"]).get_run(run_info["run_id"]).inputs.dataset_inputs
    assert {"synth-train", "shards-train", "shards-val"} <= {d.dataset.name for d in inputs}
