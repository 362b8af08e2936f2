"""The ``dirl`` console script. Subcommands mirror the pipeline stages in ``dvc.yaml``.

    dirl data ingest|preprocess|synthesize|verify|show   data stages
    dirl tune | train | evaluate | register              training and lifecycle stages
    dirl promote | rollback | compare | predict          deliberate human actions
    dirl config | summary                                inspect settings and results

Every subcommand reads ``params.yaml`` (``--params``) and accepts ``--set section.key=value``
overrides, so ``dirl train --set train.epochs=1`` is the same run that ``dvc exp run -S
train.epochs=1`` makes. Heavy imports (torch, ray, mlflow) happen inside each command so ``--help``
stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="apply the profile params/NAME.yaml (only the keys it changes) on top of --params")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter, e.g. --set train.epochs=1 (repeatable; applied after --profile)",
    )
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's and Ray Tune's own console output (result tables, progress reporters)")
    return p


def _stage(sub, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand that writes a results folder: the common options plus ``--out`` (default results/<name>)."""
    from dirl import workspace

    p = _common(sub.add_parser(name, help=text))
    p.add_argument("--out", default=str(workspace.results(name)), help="output folder (default: %(default)s)")
    return p


def load_cfg(args):
    from dirl.config import load_config, parse_override

    if getattr(args, "verbose", False):
        os.environ["DIRL_VERBOSE"] = "1"
    return load_config(args.params, overrides=dict(parse_override(o) for o in args.overrides), profile=args.profile)


# ----------------------------------------------------------------------------- commands


def cmd_config(args):
    import yaml

    from dirl.config import write_profile

    if args.write:
        if not args.profile:
            raise SystemExit("dirl config --write needs --profile NAME (the profile to apply to --params)")
        changed = write_profile(args.params, args.profile)
        for key, (old, new) in changed.items():
            print(f"  {key}: {old!r} -> {new!r}")
        print(f"{args.params}: {len(changed)} value(s) changed by profile {args.profile} (comments kept); "
              f"undo with `git checkout {args.params}`", file=sys.stderr)
        return
    cfg = load_cfg(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def cmd_data(args):
    from dirl.data import build

    cfg = load_cfg(args)
    if args.action == "show":
        path = build.show(cfg, split=args.split, n=args.n, out=args.out, source=args.source)
        print(f"contact sheet: {path}")
    elif args.action == "verify":
        problems = build.verify(cfg)  # raises NothingToVerify (exit 1, one line) when there are no shards
        if problems:
            sys.exit(1)
    else:
        getattr(build, args.action)(cfg)


def cmd_train(args):
    from dirl.train.trainer import train

    summary = train(load_cfg(args), out_dir=args.out)
    print(json.dumps({k: summary[k] for k in ("run_id", "name", "resumed", "metrics")}, indent=2, default=str))


def cmd_tune(args):
    from dirl.train.tune import tune

    summary = tune(load_cfg(args), out_dir=args.out)
    shown = {k: v for k, v in summary.items() if k not in ("trials_detail", "out_dir")}  # trials.csv has each trial
    print(json.dumps(shown, indent=2, default=str))


def cmd_evaluate(args):
    from dirl.lifecycle.evaluate import evaluate_stage

    metrics = evaluate_stage(load_cfg(args), model_ref=args.model, out_dir=args.out)
    print(json.dumps(metrics, indent=2))


def cmd_register(args):
    from dirl.lifecycle.release import register_stage

    info = register_stage(load_cfg(args), out_dir=args.out)
    print(json.dumps(info, indent=2))


def cmd_promote(args):
    from dirl.lifecycle.release import promote

    print(json.dumps(promote(load_cfg(args), force=args.force, reason=args.reason), indent=2))


def cmd_rollback(args):
    from dirl.lifecycle.release import rollback

    print(json.dumps(rollback(load_cfg(args)), indent=2))


def cmd_compare(args):
    from dirl.lifecycle.evaluate import compare

    result = compare(load_cfg(args), args.models, out_dir=args.out)
    print(result["markdown"])


def cmd_predict(args):
    from dirl.lifecycle.predict import predict_paths

    summary = predict_paths(load_cfg(args), args.inputs, model_ref=args.model, out_dir=args.out,
                            batch_size=args.batch_size, max_pixels=args.max_pixels)
    print(json.dumps(summary, indent=2, default=str))
    failed, tried = len(summary["failed"]), summary["tried"]
    if not summary["written"]:  # nothing to show for the run: a script must see it fail
        sys.exit(f"error: {failed} of {tried} inputs failed; nothing written (reasons in "
                 f"{Path(summary['out_dir']) / 'summary.json'})")
    if failed:
        print(f"warning: {failed} of {tried} inputs failed (reasons in {Path(summary['out_dir']) / 'summary.json'})",
              file=sys.stderr)


def cmd_summary(args):
    from dirl.summary import print_summary

    print_summary(Path(args.params).resolve().parent)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from dirl import workspace

    ap = argparse.ArgumentParser(
        prog="dirl",
        description="Inharmonious region localization (DIRL): data, training, tracking and model lifecycle.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run the whole pipeline with `dvc repro`; each stage is also a subcommand here.",
    )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("dirl-pipeline")
    except PackageNotFoundError:
        ver = "unknown (not installed)"
    ap.add_argument("--version", action="version", version=f"dirl {ver}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _common(sub.add_parser("config", help="validate params.yaml (plus --profile) and print the resolved config"))
    p.add_argument("--write", action="store_true",
                   help="apply --profile to the --params file in place (its comments kept) instead of printing")
    p.set_defaults(func=cmd_config)

    data = sub.add_parser("data", help="data stages: ingest, preprocess, synthesize, verify, show")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("ingest", "fetch or copy data.source into data/raw"),
                         ("preprocess", "decode, resize and write Arrow shards to data/shards"),
                         ("synthesize", "new composites from the photos + masks into data/synth"),
                         ("verify", "re-check the shards against their manifests (sizes, sha256, rows)")):
        _common(actions.add_parser(action, help=text)).set_defaults(func=cmd_data)
    p = _common(actions.add_parser("show", help="contact-sheet PNG of shard rows: composite | mask | real | overlay"))
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split to draw from")
    p.add_argument("--source", default="synth", choices=["shards", "synth"],
                   help="which shard set: data/shards (preprocessed) or data/synth (synthesized)")
    p.add_argument("-n", type=int, default=8, help="number of rows, from distinct photos (default: %(default)s)")
    p.add_argument("--out", default=None, help="output PNG (default results/show/<set>-<split>.png)")
    p.set_defaults(func=cmd_data)

    _stage(sub, "tune", "Ray Tune hyperparameter search; writes results/tune/best.yaml").set_defaults(func=cmd_tune)
    _stage(sub, "train", "Ray Train (DDP) training with checkpoints, resume and MLflow").set_defaults(func=cmd_train)
    p = _stage(sub, "evaluate", "AP/F1/IoU on the test split and extra sets, beside the centred prior, with figures")
    p.add_argument("--model", default=str(workspace.MODEL), help="weights path, run id or models:/ URI")
    p.set_defaults(func=cmd_evaluate)
    _stage(sub, "register", "register the trained model (logged by train) as a new version, alias @challenger"
           ).set_defaults(func=cmd_register)

    p = _common(sub.add_parser("promote", help="move @champion to @challenger if it is better by the margin"))
    p.add_argument("--force", action="store_true", help="promote even if not better (recorded as a tag)")
    p.add_argument("--reason", default="", help="why (recorded with --force)")
    p.set_defaults(func=cmd_promote)

    p = _common(sub.add_parser("rollback", help="restore @champion to the @previous version"))
    p.set_defaults(func=cmd_rollback)

    p = _stage(sub, "compare", "compare models (weights, run ids, models:/ URIs) on one set")
    p.add_argument("models", nargs="+", help="weights files, MLflow run ids or models:/<name>@<alias> URIs")
    p.set_defaults(func=cmd_compare)

    p = _common(sub.add_parser("predict", help="predict masks for images or folders"))
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="models:/<name>@champion, a run id, or a weights path")
    p.add_argument("--out", required=True, help="output folder for <name>_mask.png and <name>_overlay.png")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images larger than N pixels (width x height), checked from the file header before "
                        "decoding; default $DIRL_MAX_PIXELS or 40000000; 0 = no cap")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="print the pipeline's latest results and where to look next")
    p.add_argument("--params", default="params.yaml",
                   help="the workspace's parameters file; its folder holds results/ (default: %(default)s)")
    p.set_defaults(func=cmd_summary)
    return ap


def main(argv: list[str] | None = None) -> int:
    from dirl.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # expected failures print one clear line; DIRL_TRACEBACK=1 shows the traceback
        expected = type(e).__module__.startswith("dirl.") or isinstance(e, (ValueError, OSError))
        if not expected or os.environ.get("DIRL_TRACEBACK"):
            raise
        one_line = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
        print(f"error: {type(e).__name__}: {one_line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
