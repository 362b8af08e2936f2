"""A real git + DVC workspace built from this working tree, and the commands run in it (end-to-end tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from helpers.paths import ROOT

BIN = Path(sys.executable).parent


def base_env(**extra: str) -> dict:
    """The caller's environment without its tracking / storage / Ray settings, with a git identity and the
    pipeline's quiet defaults; ``extra`` on top."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "DIRL_", "RAY_ADDRESS"))
    }  # nothing from the caller's shell
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        GIT_AUTHOR_NAME="ci",
        GIT_AUTHOR_EMAIL="ci@localhost",
        GIT_COMMITTER_NAME="ci",
        GIT_COMMITTER_EMAIL="ci@localhost",
        DVC_NO_ANALYTICS="1",
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    env.update(extra)
    return env


def sh(*args, cwd: Path, env: dict | None = None, timeout: float = 900) -> str:
    """Run a command; its stdout + stderr, or an AssertionError holding their tails."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env or base_env(), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed ({proc.returncode}) after "
            f"{time.monotonic() - t0:.0f} s:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc.stdout + proc.stderr


def copy_tree(dest: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), without outputs or the venv."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def make_repo(dest: Path, *profiles: str | Path) -> Path:
    """``dest``: a git repository holding this working tree with ``profiles`` applied to params.yaml, committed."""
    from dirl.config import write_profile

    dest.mkdir(parents=True, exist_ok=True)
    copy_tree(dest)
    for profile in profiles:
        write_profile(
            dest / "params.yaml", profile if Path(str(profile)).suffix else dest / "params" / f"{profile}.yaml"
        )
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "workspace", cwd=dest)
    return dest


def ran(log: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` log says it ran."""
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}
