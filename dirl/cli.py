"""The ``dirl`` console script. Subcommands mirror the pipeline stages in ``dvc.yaml``.

    dirl data ingest|preprocess|synthesize|verify|show|compare   data stages
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
import importlib
import json
import os
import sys
from pathlib import Path

from dirl.stages.contract import one_line_errors, stage_config


def _common(p: argparse.ArgumentParser, ray: bool = False) -> argparse.ArgumentParser:
    """--params, --profile, --set; and ``-v`` where the command runs on Ray (``ray``)."""
    p.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    p.add_argument(
        "--profile",
        default=None,
        metavar="NAME",
        help="apply the profile params/NAME.yaml (only the keys it changes) on top of --params",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. --set train.epochs=1 (repeatable; applied after --profile)",
    )
    if ray:
        p.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            help="show Ray's, Ray Tune's and MLflow's own console output, per-item lines and the stage's JSON outcome",
        )
    return p


def _stage(sub, name: str, text: str, description: str = "", ray: bool = False) -> argparse.ArgumentParser:
    """A subcommand that writes a results folder: the common options plus ``--out`` (default results/<name>)."""
    from dirl import workspace

    p = _common(sub.add_parser(name, help=text, description=description or text), ray)
    p.add_argument("--out", default=str(workspace.results(name)), help="output folder (default: %(default)s)")
    return p


def load_cfg(args):
    from dirl.config import load_config, parse_override

    if getattr(args, "verbose", False):
        os.environ["DIRL_VERBOSE"] = "1"
    return load_config(args.params, overrides=dict(parse_override(o) for o in args.overrides), profile=args.profile)


def stage_cfg(args, stage):
    """The config a stage module receives (only its PARAMS and the machine sections readable), as dvc.yaml's
    ``python -m dirl.stages.<name>`` gives it."""
    from dirl.config import params_source

    check = getattr(stage, "check", None)  # the stage's own check of its params (the tune stage's search space)
    name = stage.__name__.rsplit(".", 1)[-1]
    return stage_config(load_cfg(args), stage.PARAMS, name, check, params_source(args.params, args.profile))


def _outcome(args, outcome, line: str) -> None:
    """A command's outcome on the console: ``line`` (what happened, where the full outcome is written); the
    outcome itself as JSON only with ``-v``."""
    print(line)
    if getattr(args, "verbose", False):
        print(json.dumps(outcome, indent=2, default=str))


# ----------------------------------------------------------------------------- commands


def cmd_config(args):
    import yaml

    from dirl.config import params_source, write_profile
    from dirl.train.search_space import check_search_space

    if args.write and not args.profile:
        raise SystemExit("dirl config --write needs --profile NAME (the profile to apply to --params)")
    cfg = load_cfg(args)
    check_search_space(cfg.tune.search_space, params_source(args.params, args.profile))  # the tune stage's check
    if args.write:
        changed = write_profile(args.params, args.profile)
        for key, (old, new) in changed.items():
            print(f"  {key}: {old!r} -> {new!r}")
        print(
            f"{args.params}: {len(changed)} value(s) changed by profile {args.profile} (comments kept); "
            f"undo with `git checkout {args.params}`",
            file=sys.stderr,
        )
        return
    if args.recipe:
        from dirl.summary import recipe_sentence

        print(recipe_sentence(cfg))
        return
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def cmd_data(args):
    from dirl.data import build

    cfg = load_cfg(args)
    if args.action == "show":
        path = build.show(cfg, split=args.split, n=args.n, out=args.out, source=args.source)
        print(f"contact sheet: {path}")
    elif args.action == "compare":
        from dirl.data.compare import compare

        compare(args.a, args.b, out=args.out, split=args.split, limit=args.limit, names=(args.name_a, args.name_b))
    elif args.action == "verify":
        problems = build.verify(cfg)  # raises NothingToVerify (exit 1, one line) when there are no shards
        if problems:
            sys.exit(1)
    else:  # ingest | preprocess | synthesize: the stage modules dvc.yaml runs
        stage = importlib.import_module(f"dirl.stages.{args.action}")
        stage.run(stage_config(cfg, stage.PARAMS, args.action))


def cmd_train(args):
    from dirl.stages import train

    summary = train.run(stage_cfg(args, train), out_dir=args.out)
    _outcome(
        args,
        {k: summary[k] for k in ("run_id", "name", "resumed", "metrics")},
        f"train: run {summary['run_id']}; outcome in {Path(args.out) / 'info.json'} and run.json",
    )


def cmd_tune(args):
    from dirl.stages import tune

    summary = tune.run(stage_cfg(args, tune), out_dir=args.out)
    shown = {k: v for k, v in summary.items() if k not in ("trials_detail", "out_dir")}  # trials.csv has each trial
    _outcome(args, shown, f"tune: outcome in {Path(args.out) / 'summary.json'}, best values in best.yaml")


def cmd_evaluate(args):
    from dirl.stages import evaluate

    metrics = evaluate.run(stage_cfg(args, evaluate), model_ref=args.model, out_dir=args.out)
    _outcome(args, metrics, f"evaluate: scores in {Path(args.out) / 'scores.json'}, figures beside it")


def cmd_register(args):
    from dirl.stages import register

    info = register.run(stage_cfg(args, register), out_dir=args.out)
    _outcome(args, info, f"register: {info.get('model_uri', '')} ({Path(args.out) / 'model.json'})")


def cmd_promote(args):
    from dirl.lifecycle.release import promote

    out = promote(load_cfg(args), force=args.force, reason=args.reason)
    _outcome(
        args,
        out,
        f"promote: {out['status']}: @champion is {out['name']} v{out['champion']}"
        + (f" (was v{out['previous']})" if out.get("previous") else ""),
    )


def cmd_rollback(args):
    from dirl.lifecycle.release import rollback

    out = rollback(load_cfg(args))
    _outcome(args, out, f"rollback: @champion is {out['name']} v{out['champion']} again (was v{out['previous']})")


def cmd_compare(args):
    from dirl.lifecycle.evaluate import compare

    result = compare(load_cfg(args), args.models, out_dir=args.out)
    print(result["markdown"])


def cmd_predict(args):
    from dirl.lifecycle.predict import predict_paths

    summary = predict_paths(
        load_cfg(args),
        args.inputs,
        model_ref=args.model,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_pixels=args.max_pixels,
    )
    _outcome(
        args,
        summary,
        f"predict: {summary['written']} of {summary['tried']} images written to {summary['out_dir']} (summary.json)",
    )
    failed, tried = len(summary["failed"]), summary["tried"]
    if not summary["written"]:  # nothing to show for the run: a script must see it fail
        sys.exit(
            f"error: {failed} of {tried} inputs failed; nothing written (reasons in "
            f"{Path(summary['out_dir']) / 'summary.json'})"
        )
    if failed:
        print(
            f"warning: {failed} of {tried} inputs failed (reasons in {Path(summary['out_dir']) / 'summary.json'})",
            file=sys.stderr,
        )


def cmd_weights(args):
    from dirl.models.resnet import TORCHVISION_RESNET34_SHA256, TORCHVISION_RESNET34_URL, fetch_resnet34

    if args.action == "info":
        print(
            f"file:   resnet34-b627a593.pth (torchvision ImageNet ResNet-34)\nurl:    {TORCHVISION_RESNET34_URL}\n"
            f"sha256: {TORCHVISION_RESNET34_SHA256}"
        )
        return
    path = fetch_resnet34(args.dest)
    print(f"{path}: sha256 {TORCHVISION_RESNET34_SHA256} checked; set model.pretrained: {path}")


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

    p = _common(
        sub.add_parser(
            "config",
            help="validate params.yaml (plus --profile) and print the resolved config",
            description="Validate --params (plus --profile and --set) and print the resolved "
            "configuration as YAML, or the training recipe as one sentence "
            "(--recipe); --write applies --profile to the file in place.",
        )
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="apply --profile to the --params file in place (its comments kept) instead of printing",
    )
    p.add_argument("--recipe", action="store_true", help="print the resolved training recipe as one sentence")
    p.set_defaults(func=cmd_config)

    data = sub.add_parser(
        "data",
        help="data stages: ingest, preprocess, synthesize, verify, show, compare",
        description="The data stages of the pipeline (ingest -> preprocess -> synthesize) and "
        "the tools that check and show their output (verify, show, compare).",
    )
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text, description, ray in (
        (
            "ingest",
            "fetch or copy data.source into data/raw",
            "Fetch or copy data.source (the built-in sample, a photo folder, COCO, iHarmony4) into data/raw; "
            "summary in results/ingest.",
            False,
        ),
        (
            "preprocess",
            "decode, resize and write Arrow shards to data/shards",
            "Decode and check every image and mask of data/raw, resize to data.stored_size and write Arrow "
            "shards with their splits to data/shards (on Ray when cluster settings say so).",
            True,
        ),
        (
            "synthesize",
            "new composites from the photos + masks into data/synth",
            "Make new composites from the photos and their object masks (colour-transfer methods of "
            "synth.methods) into data/synth (on Ray when cluster settings say so).",
            True,
        ),
        (
            "verify",
            "re-check the shards against their manifests (sizes, sha256, rows)",
            "Re-check data/shards and data/synth against their manifest.json: file sizes, sha256 and row "
            "counts; exit 1 on any difference.",
            False,
        ),
    ):
        _common(actions.add_parser(action, help=text, description=description), ray).set_defaults(func=cmd_data)
    p = _common(
        actions.add_parser(
            "show",
            help="contact-sheet PNG of shard rows: composite | mask | real | overlay",
            description="Draw a contact sheet (PNG) of shard rows from distinct photos: "
            "composite | mask | real (when stored) | overlay.",
        )
    )
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="split to draw from")
    p.add_argument(
        "--source",
        default="synth",
        choices=["shards", "synth"],
        help="which shard set: data/shards (preprocessed) or data/synth (synthesized)",
    )
    p.add_argument("-n", type=int, default=8, help="number of rows, from distinct photos (default: %(default)s)")
    p.add_argument("--out", default=None, help="output PNG (default results/show/<set>-<split>.png)")
    p.set_defaults(func=cmd_data)
    p = _common(
        actions.add_parser(
            "compare",
            help="two sets side by side: region area, centre and Lab shift against a ring (figure + table)",
            description="Compare two sets of composites (shard folders or iHarmony4-layout folders): the region's "
            "area, its centre and its Lab colour shift against a ring around it, as a figure and a table.",
        )
    )
    p.add_argument("a", help="first set: a shard folder (data/shards, data/synth) or an iHarmony4-layout folder")
    p.add_argument("b", help="second set, as A")
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "val", "test"],
        help="only this split of a shard folder (default: every split)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=2000,
        help="at most this many composites per set, evenly spread; 0 = all (default: %(default)s)",
    )
    p.add_argument("--name-a", default=None, help="label of A in the table and figure (default: its folder name)")
    p.add_argument("--name-b", default=None, help="label of B (default: its folder name)")
    p.add_argument("--out", default=None, help="output folder (default results/compare/<A>-vs-<B>)")
    p.set_defaults(func=cmd_data)

    _stage(
        sub,
        "tune",
        "Ray Tune hyperparameter search; writes results/tune/best.yaml",
        "Search the keys of tune.search_space with Ray Tune (tune.num_samples trials of tune.epochs each, "
        "scored by tune.metric on validation); the best values go to results/tune/best.yaml, which train reads.",
        ray=True,
    ).set_defaults(func=cmd_tune)
    _stage(
        sub,
        "train",
        "Ray Train (DDP) training with checkpoints, resume and MLflow",
        "Train the model with Ray Train (DDP over cluster.num_workers workers), with checkpoints, resume and an "
        "MLflow run; writes the exported weights (train.checkpoint: best or last epoch) and the learning curve "
        "to results/train.",
        ray=True,
    ).set_defaults(func=cmd_train)
    p = _stage(
        sub,
        "evaluate",
        "AP/F1/IoU on the test split and extra sets, beside the centred prior, with figures",
        "Score a model (AP, F1, IoU per image, as the reference) on the evaluate.split composites and "
        "evaluate.extra_sets, beside the centred Gaussian prior on the same images; writes scores, PR curves, "
        "grid.png and mda.png, and records the evaluation as an MLflow run of its own.",
    )
    p.add_argument("--model", default=str(workspace.MODEL), help="weights path, run id or models:/ URI")
    p.set_defaults(func=cmd_evaluate)
    _stage(
        sub,
        "register",
        "register the trained model (logged by train) as a new version, alias @challenger",
        "Register the model that training logged as a new version of register.model_name in the MLflow "
        "registry and point the register.alias alias (@challenger) at it; `dirl promote` decides the champion.",
    ).set_defaults(func=cmd_register)

    p = _common(
        sub.add_parser(
            "promote",
            help="move @champion to @challenger if it is better by the margin",
            description="Score @challenger (register.alias) and @champion on the test set (the evaluate.split "
            "composites, as evaluate scores them) with promote.metric (AP, F1 or IoU; default IoU). "
            "\"Better\" means the challenger's score is greater than the champion's plus promote.margin "
            "(default 0.0, in the metric's units: IoU and AP x100, F1 in [0, 1]). Then @champion moves to "
            "the challenger and the old champion becomes @previous; otherwise nothing moves and the "
            "command fails, unless --force (recorded with --reason). Without a champion the challenger "
            "becomes champion.",
        )
    )
    p.add_argument("--force", action="store_true", help="promote even if not better (recorded as a tag)")
    p.add_argument("--reason", default="", help="why (recorded with --force)")
    p.set_defaults(func=cmd_promote)

    p = _common(
        sub.add_parser(
            "rollback",
            help="restore @champion to the @previous version",
            description="Point @champion back at the @previous version and @previous at the "
            "demoted champion (a second rollback undoes the first).",
        )
    )
    p.set_defaults(func=cmd_rollback)

    p = _stage(
        sub,
        "compare",
        "compare models (weights, run ids, models:/ URIs) on one set",
        "Score several models (weights files, run ids, models:/ URIs) and the centred prior on the same "
        "sets; writes comparison.md, comparison.csv and a grid of their maps.",
    )
    p.add_argument("models", nargs="+", help="weights files, MLflow run ids or models:/<name>@<alias> URIs")
    p.set_defaults(func=cmd_compare)

    p = _common(
        sub.add_parser(
            "predict",
            help="predict masks for images or folders",
            description="Predict the inharmonious-region map of every image (files or folders, "
            "any size): <name>_mask.png and <name>_overlay.png in --out, and "
            "summary.json listing what failed and why.",
        )
    )
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--model", required=True, help="models:/<name>@champion, a run id, or a weights path")
    p.add_argument("--out", required=True, help="output folder for <name>_mask.png and <name>_overlay.png")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse images larger than N pixels (width x height), checked from the file header before "
        "decoding; default $DIRL_MAX_PIXELS or 40000000; 0 = no cap",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "weights",
        help="the ImageNet ResNet-34 that model.pretrained names: fetch it (connected "
        "machine) or show its URL and sha256",
        description="The torchvision ImageNet ResNet-34 weights that model.pretrained names: "
        "download and check them (fetch) or print their URL and sha256 (info).",
    )
    p.add_argument(
        "action",
        choices=("fetch", "info"),
        help="fetch: download and check the file; info: print its name, URL and sha256",
    )
    p.add_argument("--dest", default="data/weights", help="folder to download into (default: %(default)s)")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser(
        "summary",
        help="print the pipeline's latest results and where to look next",
        description="Print the latest results of every stage from results/ (the model beside the "
        "centred prior) and where to look next.",
    )
    p.add_argument(
        "--params",
        default="params.yaml",
        help="the workspace's parameters file; its folder holds results/ (default: %(default)s)",
    )
    p.set_defaults(func=cmd_summary)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return one_line_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
