"""``dvc.yaml`` must not drift from the code: each stage declares the Python files it loads and the params it reads.

The analysis lives in ``pipeline/depgraph.py`` (``ast`` + ``yaml``, no torch or Ray; its docstring has the rules);
``python pipeline/depgraph.py`` prints what each stage should declare, ``--why STAGE FILE`` why a file is needed.

* Deps: every project ``.py`` file a stage's process loads (the import closure of its entry, lazy imports in
  reachable functions included) must be covered by a dep of the stage (the file, or a folder above it); else DVC
  does not re-run the stage when that file changes. A declared ``.py`` dep the stage does not load is *stale*:
  reported as a warning, not a failure, because a static scan can miss a dynamic use, while a missing dep is
  certain (the file is imported).
* Driver modules are not exempt. ``pipeline/stages.py``, ``dirl/cli.py`` and what they load
  (``dirl/__init__.py``, ``dirl/config.py``) run in every stage's process: they parse the argv, load and validate
  params.yaml (``dirl/config.py`` also holds defaults the stages use, e.g. ``TUNED_DEFAULTS``) and print the
  result, so a change there can change or break any stage. A module that the driver imports only to display
  something would be required too: it runs in the stage's process, and an exemption list would go stale unseen.
  (This code has none: the argv is folded, so ``dirl data ingest`` does not load what ``dirl data show`` draws.)
* Params: each stage's declared params.yaml keys, at section granularity: a section declared whole must be read,
  a declared ``section.key`` must be read, every key read must be declared (by its section or itself). Reads only
  in error or console messages do not count. The machine sections (``dirl.config.MACHINE_SECTIONS``, default
  ``("cluster", "mlflow")``) are exempt both ways: where a stage runs and records is not what it computes.
  Entries of another file (``results/tune/best.yaml: [train.lr]``) are an upstream output's values: not compared.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import textwrap
import warnings

import pytest
import yaml

from helpers.paths import ROOT


def _load_depgraph():
    name = "dirl_pipeline_depgraph"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "pipeline" / "depgraph.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


dg = _load_depgraph()


class StaleDeps(UserWarning):
    """dvc.yaml declares code a stage does not load (it re-runs the stage for nothing)."""


@pytest.fixture(scope="module")
def tree():
    project = dg.Project(ROOT)
    dvc = dg.load_dvc(ROOT)
    return project, dvc, dg.analyze(dvc, project)


def complete_dvc(dvc: dict, analyses: dict, machine) -> dict:
    """``dvc`` with each analysed stage's code deps and params.yaml params set to exactly what the code needs."""
    out = copy.deepcopy(dvc)
    for stage, a in analyses.items():
        spec = out["stages"][stage]
        data = [d for d in dg.declared_deps(spec) if d.split("/")[0] not in dg.CODE_DIRS]
        spec["deps"] = data + sorted(a.files)
        others = [p for p in spec.get("params") or [] if isinstance(p, dict)
                  and any(dg._norm(f) != dg.PARAMS_FILE for f in p)]
        spec["params"] = [k for k in a.read_keys() if k.split(".")[0] not in machine] + others
    return out


# ----------------------------------------------------------------------------- the checks on this tree


def test_python_deps_cover_the_import_closure(tree):
    project, dvc, analyses = tree
    assert analyses, "dvc.yaml has no stage that runs a Python script"
    missing, stale = dg.check_deps(dvc, analyses, ROOT)
    if stale:
        warnings.warn(StaleDeps("\n" + dg.format_stale(stale)), stacklevel=1)
    if missing:
        pytest.fail("dvc.yaml does not declare project files its stages load (DVC would not re-run a stage when "
                    "one of them changes):\n" + dg.format_missing(missing)
                    + "\n(`python pipeline/depgraph.py --why STAGE FILE` shows how a stage comes to load a file)",
                    pytrace=False)


def test_params_are_exactly_what_each_stage_reads(tree):
    project, dvc, analyses = tree
    problems = dg.check_params(dvc, analyses, project)
    if problems:
        pytest.fail(f"dvc.yaml params differ from what the stages read (machine sections "
                    f"{', '.join(project.machine)} exempt):\n" + dg.format_params(problems), pytrace=False)


# ----------------------------------------------------------------------------- the checks can fail


def test_checks_fail_on_a_drifted_stage_definition(tree):
    """The same check functions, fed a dvc.yaml fixed from the analysis and then broken one way at a time."""
    project, dvc, analyses = tree
    machine = set(project.machine)
    fixed = complete_dvc(dvc, analyses, machine)
    assert dg.check_deps(fixed, analyses, ROOT) == ({}, {})
    assert dg.check_params(fixed, analyses, project) == {}

    # one dep removed: the stage and the file are named, with the line to add
    stage = "train" if "train" in analyses else next(iter(analyses))
    spec = fixed["stages"][stage]
    victim = max(sorted(analyses[stage].files), key=lambda f: f.count("/"))  # e.g. dirl/data/loader.py
    broken = copy.deepcopy(fixed)
    broken["stages"][stage]["deps"] = [d for d in spec["deps"] if d != victim]
    missing, _ = dg.check_deps(broken, analyses, ROOT)
    assert missing == {stage: [victim]}
    text = dg.format_missing(missing)
    assert f"stage '{stage}'" in text and f"stages.{stage}.deps" in text and f"      - {victim}" in text

    # a folder covers the files under it
    folder = victim.rsplit("/", 1)[0]
    broken["stages"][stage]["deps"] = [d for d in spec["deps"] if not d.startswith(folder + "/")] + [folder]
    assert dg.check_deps(broken, analyses, ROOT)[0] == {}

    # a .py dep the stage does not load is stale; so is one that no longer exists
    unloaded = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "dirl").rglob("*.py")
                      if p.relative_to(ROOT).as_posix() not in analyses[stage].files)
    extra = (unloaded[:1] or []) + ["dirl/no_such_module.py"]
    broken["stages"][stage]["deps"] = spec["deps"] + extra
    _, stale = dg.check_deps(broken, analyses, ROOT)
    assert [s.split()[0] for s in stale[stage]] == extra

    # params: a read section or key left out, an unread section added, a key params.yaml lacks
    a = analyses[stage]
    read = [k for k in a.read_keys() if k.split(".")[0] not in machine]
    assert read, f"stage {stage} reads no params"
    broken = copy.deepcopy(fixed)
    broken["stages"][stage]["params"] = [p for p in fixed["stages"][stage]["params"] if p != read[0]]
    problems = dg.check_params(broken, analyses, project)
    assert list(problems) == [stage] and f"`- {read[0]}`" in problems[stage][0] and "add" in problems[stage][0]

    unread = sorted(s for s in project.sections - set(a.reads) - machine)
    if unread:
        broken["stages"][stage]["params"] = fixed["stages"][stage]["params"] + [unread[0]]
        problems = dg.check_params(broken, analyses, project)
        assert problems == {stage: [f"declares the section `{unread[0]}` but reads nothing of it: remove "
                                    f"`- {unread[0]}` from stages.{stage}.params"]}

    sec = read[0].split(".")[0]
    broken["stages"][stage]["params"] = fixed["stages"][stage]["params"] + [f"{sec}.no_such_key"]
    problems = dg.check_params(broken, analyses, project)
    assert any(f"`{sec}.no_such_key`" in p and "does not have" in p for p in problems[stage])

    # machine sections: neither required nor refused
    broken["stages"][stage]["params"] = fixed["stages"][stage]["params"] + sorted(machine)
    assert dg.check_params(broken, analyses, project) == {}


# ----------------------------------------------------------------------------- the analysis itself

MINI = {
    "minipkg/__init__.py": "",
    "minipkg/config.py": '''
        from dataclasses import dataclass, field

        MACHINE_SECTIONS = ("cluster",)

        @dataclass
        class DataConfig:
            workers: int = 0
            seed: int = 0
            source: str = "sample"

        @dataclass
        class TrainConfig:
            lr: float = 0.1
            epochs: int = 1

        @dataclass
        class ClusterConfig:
            address: str = ""

        @dataclass
        class Config:
            data: DataConfig = field(default_factory=DataConfig)
            train: TrainConfig = field(default_factory=TrainConfig)
            cluster: ClusterConfig = field(default_factory=ClusterConfig)

            def __post_init__(self):
                assert self.train.epochs >= 0  # validation: no read

            def to_dict(self):
                import dataclasses
                return dataclasses.asdict(self)

        def load_config(path="params.yaml"):
            return Config()
    ''',
    "minipkg/cli.py": '''
        import argparse
        import sys

        def load_cfg(args):
            from minipkg.config import load_config
            return load_config(args.params)

        def cmd_data(args):
            from minipkg import stages
            cfg = load_cfg(args)
            if args.action == "show":
                stages.show(cfg)
            else:
                getattr(stages, args.action)(cfg)

        def cmd_other(args):
            from minipkg import unused

        def build_parser():
            ap = argparse.ArgumentParser()
            sub = ap.add_subparsers(dest="command", required=True)
            data = sub.add_parser("data")
            actions = data.add_subparsers(dest="action", required=True)
            for name in ("ingest", "show"):
                p = actions.add_parser(name)
                p.add_argument("--params", default="params.yaml")
                p.set_defaults(func=cmd_data)
            sub.add_parser("other").set_defaults(func=cmd_other)
            return ap

        def main(argv=None):
            args = build_parser().parse_args(argv)
            try:
                args.func(args)
            except Exception:
                return 1
            return 0
    ''',
    "minipkg/stages.py": '''
        from minipkg.config import Config

        def ingest(cfg: Config):
            from minipkg.lazy import helper
            from minipkg.sub.mod import f
            n = cfg.data.workers
            helper(cfg.train)                     # the whole section passed on
            if cfg.cluster.address:               # a machine setting
                pass
            raise ValueError(f"bad {cfg.data.source}")  # a message: no read

        def show(cfg: Config):
            from minipkg.display import draw     # only `data show` loads it
            draw(cfg.data.seed)
    ''',
    "minipkg/lazy.py": "def helper(tc):\n    return tc.lr\n",
    "minipkg/sub/__init__.py": "",
    "minipkg/sub/mod.py": "def f():\n    pass\n",
    "minipkg/display.py": "def draw(x):\n    pass\n",
    "minipkg/unused.py": "",
    "minipkg/fit.py": '''
        from minipkg.config import TrainConfig

        def fit(cfg):
            t = cfg.train
            run(t)
            d = cfg.to_dict()
            d["train"]["lr"] = 1.0                 # a write: no read
            return d["data"]["seed"]

        def run(tc: TrainConfig):
            return tc.epochs
    ''',
    "pipeline/stages.py": '''
        import sys

        from minipkg.cli import main

        STAGES = {"ingest": ["data", "ingest"], "show": ["data", "show"]}

        if __name__ == "__main__":
            sys.exit(main(STAGES[sys.argv[1]] + sys.argv[2:]))
    ''',
    "pipeline/direct.py": '''
        import sys

        from minipkg.fit import fit
        from minipkg.stages import ingest

        STAGES = {"fit": fit, "ingest": ingest}

        if __name__ == "__main__":
            STAGES[sys.argv[1]](None)
    ''',
    "params.yaml": '''
        data: {workers: 0, seed: 0, source: sample}
        train: {lr: 0.1, epochs: 1}
        cluster: {address: ""}
    ''',
    "dvc.yaml": '''
        stages:
          ingest:
            cmd: python pipeline/stages.py ingest
            deps: [pipeline/stages.py, minipkg]
            params: [data.workers, train, cluster]
          show:
            cmd: python pipeline/stages.py show
            deps: [minipkg/stages.py, minipkg/unused.py]
            params: [data]
          fit:
            cmd: python pipeline/direct.py fit
            deps: [pipeline/direct.py, minipkg/fit.py, minipkg/config.py]
            params: [train.epochs]
    ''',
}


def test_analysis_of_a_miniature_project(tmp_path):
    for rel, text in MINI.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    project = dg.Project(tmp_path, code_dirs=("minipkg", "pipeline"), config_module="minipkg/config.py")
    assert project.machine == ("cluster",)
    dvc = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    a = dg.analyze(dvc, project)

    assert a["ingest"].files == {
        "pipeline/stages.py", "minipkg/__init__.py", "minipkg/cli.py", "minipkg/config.py", "minipkg/stages.py",
        "minipkg/lazy.py", "minipkg/sub/__init__.py", "minipkg/sub/mod.py"}  # not display.py, not unused.py
    assert a["ingest"].reads == {"data": {"workers"}, "train": {"*"}, "cluster": {"address"}}
    assert "minipkg/display.py" in a["show"].files and "minipkg/lazy.py" not in a["show"].files
    assert a["show"].reads == {"data": {"seed"}}
    assert a["fit"].files == {"pipeline/direct.py", "minipkg/__init__.py", "minipkg/fit.py", "minipkg/config.py",
                              "minipkg/stages.py"}  # direct.py imports stages.py at module level
    assert a["fit"].reads == {"train": {"*", "epochs"}, "data": {"seed"}}

    missing, stale = dg.check_deps(dvc, a, tmp_path, ("minipkg", "pipeline"))
    assert "ingest" not in missing and "ingest" not in stale  # the folder dep covers all
    assert missing["show"] == ["minipkg/__init__.py", "minipkg/cli.py", "minipkg/config.py", "minipkg/display.py",
                               "pipeline/stages.py"]
    assert stale["show"] == ["minipkg/unused.py"]
    assert missing["fit"] == ["minipkg/__init__.py", "minipkg/stages.py"]

    problems = dg.check_params(dvc, a, project)
    assert "ingest" not in problems  # cluster declared or not: exempt
    assert "show" not in problems  # `data` declared whole, data.seed read
    assert any("`- train`" in p for p in problems["fit"]) and any("`- data.seed`" in p for p in problems["fit"])
    narrowed = {"stages": {"ingest": {**dvc["stages"]["ingest"], "params": ["data.workers", "train"]}}}
    assert dg.check_params(narrowed, {"ingest": a["ingest"]}, project) == {}
    narrowed["stages"]["ingest"]["params"] = [{"params.yaml": None}]
    assert dg.check_params(narrowed, {"ingest": a["ingest"]}, project) == {"ingest": [
        "declares the whole params.yaml: replace it in stages.ingest.params by the keys the stage reads: "
        "`- data.workers`, `- train`"]}

    assert a["ingest"].why("minipkg/lazy.py") == [
        "minipkg/lazy.py", "  imported by minipkg.stages:ingest",
        "  minipkg.stages:ingest is used by minipkg.cli:cmd_data",
        "  minipkg.cli:cmd_data is used by the stage's dispatch (its entry)"]
    with pytest.raises(dg.EntryError, match="python <script>.py <stage>"):
        dg.analyze({"stages": {"m": {"cmd": "python -m minipkg.cli data ingest"}}}, project)
