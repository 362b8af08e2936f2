"""How a stage is started, and what it may read: ``python -m dirl.stages.<name> [--set key=value ...]``.

Each module of ``dirl/stages/`` declares ``PARAMS`` (the params.yaml sections or ``section.key``s it reads, which
are its params in dvc.yaml) and a ``run(cfg, **options) -> summary``. :func:`main` loads ``params.yaml`` (plus
``--profile`` and ``--set``) and hands ``run`` a config restricted to ``PARAMS`` and the machine sections
(:func:`dirl.config.restrict`): reading anything else fails, naming the key to declare. ``dirl <stage>`` goes through
:func:`stage_config` too, so both run the same function on the same config. ``pipeline/dvcyaml.py`` keeps dvc.yaml's
cmd, params and code deps equal to what the stage modules declare and load.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dirl.config import Config, ConfigError, load_config, params_source, parse_override, restrict


def stage_config(
    cfg: Config, params: Sequence[str], name: str, check: Callable[[Config, str], Any] | None = None, src: str = ""
) -> Config:
    """``cfg`` as stage ``name`` receives it: only ``params`` and the machine sections readable. ``check``: the
    stage's own check of its params beyond their types and ranges (the tune stage's of ``tune.search_space``), run
    first on the whole config; its ConfigError names ``src``, the params file (``dirl.config.params_source``)."""
    if check is not None:
        check(cfg, src)
    return restrict(cfg, params, name)


def one_line_errors(fn: Callable[[], Any]) -> int:
    """Run ``fn``; an expected failure (a ConfigError, a ValueError or OSError, an error of the dirl package) prints
    ``error: <Type>: <message>`` on one line and returns 1 (2 for a ConfigError); DIRL_TRACEBACK=1 re-raises."""
    try:
        fn()
    except ConfigError as e:
        if os.environ.get("DIRL_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        expected = type(e).__module__.startswith("dirl.") or isinstance(e, (ValueError, OSError))
        if not expected or os.environ.get("DIRL_TRACEBACK"):
            raise
        one_line = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
        print(f"error: {type(e).__name__}: {one_line}", file=sys.stderr)
        return 1
    return 0


def main(
    run: Callable[..., dict],
    params: Sequence[str],
    name: str,
    argv: Sequence[str] | None = None,
    check: Callable[[Config, str], Any] | None = None,
) -> int:
    """The ``python -m dirl.stages.<name>`` entry point (what dvc.yaml runs); ``check``: see :func:`stage_config`."""
    ap = argparse.ArgumentParser(prog=f"python -m dirl.stages.{name}", description=(run.__doc__ or "").split("\n")[0])
    ap.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    ap.add_argument("--profile", default=None, metavar="NAME", help="apply params/NAME.yaml on top of --params")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (repeatable)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="Ray's and Tune's own console output")
    args = ap.parse_args(argv)
    if args.verbose:
        os.environ["DIRL_VERBOSE"] = "1"

    def go() -> None:
        cfg = load_config(args.params, overrides=dict(parse_override(o) for o in args.overrides), profile=args.profile)
        run(stage_config(cfg, params, name, check, params_source(args.params, args.profile)))

    return one_line_errors(go)
