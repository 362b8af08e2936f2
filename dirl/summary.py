"""The closing summary of ``make run``: what the pipeline produced and where to look next."""

from __future__ import annotations

import json
from pathlib import Path

from dirl.tracking import runs_url


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(name: str, m: dict) -> str:
    return f"  {name:<14} n={m.get('n', '?'):>5}  AP {m['AP']:6.2f}  F1 {m['F1']:.4f}  IoU {m['IoU']:6.2f}"


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(data, header: tuple[str, str], indent: int = 9) -> list[str]:
    """``{name: value}`` (a dict; anything else is shown as one row) as aligned rows under ``header``: names
    left-aligned, values right-aligned, ``indent`` spaces in; [] when there is nothing to show."""
    if not data:
        return []
    if not isinstance(data, dict):
        data = {"": data}
    rows = [header] + [(str(k), _value(v)) for k, v in data.items()]
    wide_k = max(len(k) for k, _ in rows)
    wide_v = max(len(v) for _, v in rows)
    return [" " * indent + f"{k:<{wide_k}}  {v:>{wide_v}}".rstrip() for k, v in rows]


def margin_line(summary: dict) -> str:
    """One line on the best trial's lead: ``margin 0.06 val_iou points over trial 0001, within noise (up to
    +-14.43 for a mean over 12 validation images)``; "" with fewer than two scored trials."""
    if summary.get("margin") is None:
        return ""
    line = (
        f"margin {summary['margin']:.2f} {summary['metric']} over trial {str(summary['runner_up']).rsplit('_', 1)[-1]}"
    )
    if summary.get("noise") is None:
        return line + " (the noise of this metric is not estimated)"
    verdict = "beyond noise" if summary["beyond_noise"] else "within noise"
    return f"{line}, {verdict} (up to +-{summary['noise']:.2f} for a mean over {summary['n_val']} validation images)"


def summary_lines(root: Path) -> list[str]:
    r = root / "results"
    lines = ["", "=" * 72, "DIRL pipeline summary", "=" * 72]
    data = _load(r / "synthesize" / "summary.json")
    prep = _load(r / "preprocess" / "summary.json")
    if prep:
        lines.append(
            f"data     {prep['rows']} source rows in data/shards, {prep.get('bad', 0)} bad "
            "(results/preprocess/issues.json)"
        )
        lines += table(prep.get("splits"), ("split", "rows"))
    if data:
        lines.append(f"synth    {data['composites']} composites in data/synth from {data['real_images']} photos")
        lines += table(data.get("methods"), ("method", "composites"))
    tune = _load(r / "tune" / "summary.json")
    if tune and tune.get("skipped"):
        lines.append(f"tune     skipped ({tune.get('reason')}); train uses:")
        lines += table({k: _value(v) for k, v in (tune.get("best") or {}).items()}, ("key", "value"))
    elif tune:
        best = ", ".join(
            f"{k.split('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (tune.get("best") or {}).items()
        )
        lines.append(
            f"tune     best {tune.get('metric')} {tune.get('best_value') or float('nan'):.2f} ({best}) of "
            f"{tune.get('trials')} trials ({tune.get('trials_ok')} ok, {tune.get('trials_stopped')} stopped, "
            f"{tune.get('trials_failed')} failed) in {tune.get('seconds', 0):.0f} s"
        )
        if margin_line(tune):
            lines.append(f"         {margin_line(tune)}")
        if tune.get("trial_steps") is not None:
            lines.append(
                f"         each trial: {tune['trial_steps']} steps, {tune.get('warmup_steps')} of them warm-up"
            )
    train = _load(r / "train" / "info.json")
    if train:
        nan = float("nan")
        if "selected_epoch" in train:
            lines.append(
                f"train    exported epoch {train['selected_epoch']} of {train.get('epochs')} "
                f"(train.checkpoint: {train.get('selection')}): val IoU "
                f"{train.get('selected_val_iou') or nan:.2f}, val AP {train.get('selected_val_ap') or nan:.2f}"
                f" ({train.get('images_per_s') or 0:.1f} img/s)"
            )
            lines.append(
                f"         best over the epochs: val IoU {train.get('best_val_iou') or nan:.2f} "
                f"(epoch {train.get('best_epoch')}), val AP {train.get('best_val_ap') or nan:.2f}"
            )
        else:  # written before the train stage told the exported epoch from the best one
            lines.append(
                f"train    epoch {train.get('best_epoch')} of {train.get('epochs')}: "
                f"val IoU {train.get('val_iou') or nan:.2f}, val AP {train.get('val_ap') or nan:.2f}"
                f" ({train.get('images_per_s') or 0:.1f} img/s)"
            )
    ev = _load(r / "evaluate" / "scores.json")
    if ev:
        lines.append("evaluate (model beside the centred-prior baseline on the same images)")
        for name, sets in ev.items():
            if isinstance(sets, dict) and "model" in sets:
                lines.append(f" {name}:")
                lines.append(_row("model", sets["model"]))
                if "centre_prior" in sets:
                    lines.append(_row("centre prior", sets["centre_prior"]))
                    d_iou = sets["model"]["IoU"] - sets["centre_prior"]["IoU"]
                    d_ap = sets["model"]["AP"] - sets["centre_prior"]["AP"]
                    verdict = "beats" if d_iou > 0 else "does NOT beat"
                    lines.append(
                        f"  -> the model {verdict} the centred prior: IoU {d_iou:+.2f} points, AP {d_ap:+.2f} points"
                    )
    reg = _load(r / "register" / "model.json")
    if reg:
        lines.append(f"register {reg['model_uri']} (@{reg.get('alias')}), run {reg.get('run_id')}")

    run = _load(r / "train" / "run.json") or {}
    ui = runs_url("http://127.0.0.1:5000", str(run.get("experiment_id") or "0"))
    lines += [
        "",
        "Next:",
        f"  make mlflow-ui                          then open {ui}",
        "  .venv/bin/dvc metrics show; .venv/bin/dvc plots show   metrics and curves (dvc_plots/index.html)",
        "  .venv/bin/dirl promote                  move @champion to the new @challenger if it is better",
        f"  .venv/bin/dirl predict IMG --model models:/{reg['name'] if reg else 'dirl'}@challenger --out preds/",
        "  .venv/bin/dirl data show                contact sheet of synthesized composites",
        "  notebooks/walkthrough.ipynb             the guided tour",
    ]
    return lines


def print_summary(root: Path = Path(".")) -> None:
    print("\n".join(summary_lines(Path(root))))


def recipe_sentence(cfg) -> str:
    """The training and evaluation recipe of a resolved config, in one sentence (the README quotes it for the
    iHarmony4 profiles; a test keeps the two equal). ``cfg``: a :class:`dirl.config.Config`."""
    t, m, d = cfg.train, cfg.model, cfg.data

    def num(v) -> str:
        return "searched" if v is None else f"{v:g}"

    init = "ImageNet ResNet-34 (" + m.pretrained.rsplit("/", 1)[-1] + ")" if m.pretrained else "random init"
    schedule = (
        f"lr x {t.gamma:g} at epochs {'/'.join(map(str, t.milestones))} of {t.epochs}"
        if t.schedule == "multistep"
        else f"cosine over {t.epochs} epochs"
    )
    warmup = f" after {t.warmup_steps} warm-up steps" if t.warmup_steps else ""
    search = (
        f"a search of {cfg.tune.num_samples} trials over {', '.join(map(str, cfg.tune.search_space))}"
        if cfg.tune.enabled
        else "no search"
    )
    synth = (
        "synthesized composites in the training split"
        if cfg.synth.augment_iharmony4 or d.source != "iharmony4"
        else "no synthesized rows"
    )
    sync = {
        "auto": " (BatchNorm synced over GPU workers that hold fewer than 8 images)",
        "on": " (BatchNorm synced over the GPU workers)",
        "off": "",
    }[t.sync_bn]
    stored = f"shortest side {d.stored_size}" if d.keep_aspect else f"{d.stored_size} x {d.stored_size}"
    return (
        f"`{m.name}` at {m.input_size} from {init}, Adam lr {num(t.lr)}, betas ({t.betas[0]:g}, {t.betas[1]:g}), "
        f"L2 weight decay {num(t.weight_decay)}, lambda {num(t.lam)}, {schedule}{warmup}, a global batch of "
        f"{t.batch_size}{sync}, {t.precision}, {search}, {synth}, the {t.checkpoint} epoch by validation IoU on "
        f"{d.val_fraction:.0%} of the training list; training rows stored at {stored}, test images resized "
        f"{'bilinearly' if cfg.evaluate.interpolation == 'bilinear' else 'with the area filter when shrinking'} "
        f"to {m.input_size}."
    )
