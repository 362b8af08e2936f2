"""Keep dvc.yaml equal to the stage modules: each stage's cmd, params and code deps.

    python pipeline/dvcyaml.py            check: print each difference as the line to add or drop; exit 1 if any
    python pipeline/dvcyaml.py --write    rewrite those three fields of dvc.yaml (comments, data deps and outs kept)

What a stage declares is read off its module, ``dirl/stages/<name>.py``:
- cmd: ``python -m dirl.stages.<name>``;
- params: its ``PARAMS`` (the config it receives holds nothing else, see ``dirl.config.restrict``), plus entries
  of other files (``results/tune/best.yaml: [...]``), which are kept as written;
- code deps: the project files its process loads: every ``dirl/`` module a fresh interpreter holds after
  ``import dirl.stages.<name>``, plus the project modules that imports inside their functions name (followed
  the same way). Data deps (``data/shards``, ``results/train/model.pt``) are kept as written, in front.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib, json, sys; m = importlib.import_module('dirl.stages.' + sys.argv[1]); "
    "print(json.dumps({'params': list(m.PARAMS), 'files': sorted({f for f in (getattr(x, '__file__', None) "
    "for x in list(sys.modules.values())) if f})}))"
)
LAZY = re.compile(r"^[ \t]+(?:from\s+(dirl(?:\.\w+)*)\s+import\s+([\w, ()]+)|import\s+(dirl(?:\.\w+)*))", re.M)


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _with_lazy_imports(root: Path, files: set[Path]) -> set[Path]:
    """``files`` plus the project modules named by imports inside their functions, transitively."""
    todo, seen = list(files), set(files)
    while todo:
        for m in LAZY.finditer(todo.pop().read_text()):
            module = m.group(1) or m.group(3)
            names = [n.strip(" ()") for n in (m.group(2) or "").split(",")]
            parts = module.split(".")
            candidates = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] + [f"{module}.{n}" for n in names if n]
            for f in filter(None, (_module_file(root, c) for c in candidates)):
                if f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


@cache
def declared(root: Path, stage: str) -> dict:
    """What ``dirl/stages/<stage>.py`` declares: ``{cmd, params, code}``, by importing it in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, stage],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    if out.returncode != 0:
        raise SystemExit(f"cannot import dirl.stages.{stage}: {out.stderr.strip().splitlines()[-1:]}")
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    package = (root / "dirl").resolve()
    files = {Path(f).resolve() for f in probe["files"]}
    files = {f for f in files if f.is_relative_to(package)}
    code = sorted(f.relative_to(root.resolve()).as_posix() for f in _with_lazy_imports(root, files))
    return {"cmd": f"python -m dirl.stages.{stage}", "params": sorted(probe["params"]), "code": code}


def _is_code(dep: str) -> bool:
    return dep.endswith(".py")


def problems(root: Path = ROOT, dvc_file: Path | None = None) -> list[str]:
    """Each difference between dvc.yaml and the stage modules, as one line naming what to change."""
    dvc = yaml.safe_load((dvc_file or root / "dvc.yaml").read_text())["stages"]
    with ThreadPoolExecutor(4) as pool:
        want = dict(zip(dvc, pool.map(lambda s: declared(root, s), dvc)))
    out = []
    for stage, spec in dvc.items():
        w = want[stage]
        if spec.get("cmd") != w["cmd"]:
            out.append(f"stage {stage}: cmd is {spec.get('cmd')!r}; set it to {w['cmd']!r}")
        deps = [d for d in spec.get("deps", []) if isinstance(d, str) and _is_code(d)]
        out += [f"stage {stage}: deps lacks {f}: add the line `      - {f}`" for f in w["code"] if f not in deps]
        out += [f"stage {stage}: deps names {f}, which it does not load: remove it" for f in deps if f not in w["code"]]
        params = [p for p in spec.get("params", []) if isinstance(p, str)]
        out += [f"stage {stage}: params lacks {p}: add the line `      - {p}`" for p in w["params"] if p not in params]
        out += [
            f"stage {stage}: params names {p}, which dirl/stages/{stage}.py does not declare: remove it (or add "
            f"it to PARAMS)"
            for p in params
            if p not in w["params"]
        ]
    return out


def write(root: Path = ROOT, dvc_file: Path | None = None) -> list[str]:
    """Rewrite cmd, params and code deps of every stage in dvc.yaml (ruamel round trip: comments kept)."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    path = dvc_file or root / "dvc.yaml"
    ry = YAML()
    ry.preserve_quotes = True
    ry.width = 120
    ry.indent(mapping=2, sequence=4, offset=2)
    doc = ry.load(path.read_text())
    changed = []
    for stage, spec in doc["stages"].items():
        w = declared(root, stage)
        deps = [d for d in spec.get("deps", []) if not (isinstance(d, str) and _is_code(d))] + w["code"]
        params = w["params"] + [p for p in spec.get("params", []) if not isinstance(p, str)]
        before = (spec.get("cmd"), list(spec.get("deps", [])), list(spec.get("params", [])))
        spec["cmd"], spec["deps"], spec["params"] = w["cmd"], CommentedSeq(deps), CommentedSeq(params)
        if before != (w["cmd"], deps, params):
            changed.append(stage)
    with path.open("w") as f:
        ry.dump(doc, f)
    return changed


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        done = write()
        print(f"dvc.yaml: {', '.join(done) + ' rewritten' if done else 'no stage rewritten'}")
    else:
        found = problems()
        print("\n".join(found) or "dvc.yaml matches the stage modules")
        sys.exit(1 if found else 0)
