"""Training benchmark: the Ray Train loop (TorchTrainer + Ray Data) vs a bare PyTorch loop, same model and data.

Baseline ("bare"): one process, ``ShardDataset.iter_batches`` (decode in the training thread) feeding
``dirl.train.epoch.train_one_epoch``. Candidate ("ray"): ``dirl.train.train`` on a local Ray: one Ray Train
worker, Ray Data read + decode tasks, a checkpoint reported every epoch, MLflow logging. Both use the same
model, input size, batch, precision, torch threads and shard folder, and the same ``train_one_epoch``.

Reported:
- CPU time per step of the training process: the bare loop's minus its in-thread decoding vs the Ray worker's
  (decoding runs in Ray Data tasks): robust to a busy machine, unlike wall times;
- steady-state step time (median wall time of a step, data wait included, first step of each epoch excluded)
  of each loop, and their ratio (the Ray loop's per-step overhead);
- the fixed cost of the Ray run: cluster start (``ray.init``) + everything in ``train()`` that is not an epoch
  (worker group start, dataset set-up, validation, checkpoints, MLflow, outputs).

The bare loop runs before and after the Ray run (the machine may be shared: compare the two).

    python benchmarks/bench_train.py                                  # toy shards, unet @ 64, fp32
    python benchmarks/bench_train.py --data data/shards --model dirl_lite --size 128 --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def toy_shards(out_dir: Path, n: int = 96, size: int = 64, seed: int = 0) -> Path:
    """Synthetic composites (a colour-shifted rectangle on a textured background) in the shard format."""
    from dirl.data.toy import toy_shards as write

    return write(out_dir, n_train=n, n_val=max(4, n // 8), size=size, seed=seed, batch_rows=32)


def bare_loop(cfg, data: Path, threads: int) -> dict:
    """The baseline: epochs of train_one_epoch over ShardDataset batches in this process."""
    from dirl.data.loader import ShardDataset
    from dirl.losses import DIRLLoss
    from dirl.models import create_model
    from dirl.speed import SpeedConfig, make_grad_scaler, prepare_model
    from dirl.train.best_yaml import resolve_tuned
    from dirl.train.epoch import build_optimizer, seed_everything, train_one_epoch

    torch.set_num_threads(threads)
    tc = resolve_tuned(cfg, None)[0].train  # null tuned keys -> their defaults
    seed_everything(tc.seed)
    speed = SpeedConfig(tc.precision, tc.channels_last, tc.compile)
    model = prepare_model(create_model(cfg.model.name), "cpu", speed)
    opt = build_optimizer(model, tc)
    scaler = make_grad_scaler("cpu", speed)
    ds = ShardDataset(data, "train", cfg.model.input_size, train=True, seed=tc.seed)
    epochs = []
    t0 = time.perf_counter()
    for e in range(tc.epochs):
        ds.set_epoch(e)
        epochs.append(
            train_one_epoch(
                model,
                ds.iter_batches(tc.batch_size, shuffle=True, drop_last=True),
                DIRLLoss(tc.lam),
                opt,
                "cpu",
                speed,
                scaler,
                tc.max_steps_per_epoch,
            )
        )
    wall = time.perf_counter() - t0
    # CPU time of decoding alone (same batches, no model): what Ray Data takes off the training process
    ds.set_epoch(0)
    c0, n = time.process_time(), 0
    for _ in zip(range(tc.max_steps_per_epoch or 10**9), ds.iter_batches(tc.batch_size, shuffle=True, drop_last=True)):
        n += 1
    data_cpu = (time.process_time() - c0) / max(n, 1)
    steps = sum(ep["steps"] for ep in epochs)
    return {
        "step_s": statistics.median(ep["step_s"] for ep in epochs),
        "epochs": epochs,
        "wall_s": wall,
        "cpu_per_step": sum(ep["cpu_s"] for ep in epochs) / steps,
        "data_cpu_per_step": data_cpu,
    }


def ray_loop(cfg, data: Path, work: Path) -> dict:
    """The candidate: dirl.train.train on a fresh local Ray; returns step time and fixed-cost breakdown."""
    import ray

    from dirl.cluster import ray_env
    from dirl.stages.train import run as train

    ray_env()
    t0 = time.perf_counter()
    ray.init(num_cpus=cfg.cluster.num_cpus or None, log_to_driver=False)
    init_s = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        out = train(cfg, out_dir=work / "out", data_dirs=[data], root=work, resume=False)
        train_s = time.perf_counter() - t1
    finally:
        ray.shutdown()
    hist = out["history"]
    epochs_s = sum(r["epoch_s"] for r in hist)
    return {
        "step_s": statistics.median(r["step_s"] for r in hist),
        "init_s": init_s,
        "train_s": train_s,
        "cpu_per_step": sum(r["epoch_cpu_s"] for r in hist) / sum(r["steps"] for r in hist),
        "setup_s": out["setup_s"],
        "fit_s": out["fit_s"],
        "epochs_s": epochs_s,
        "fixed_s": init_s + train_s - epochs_s,
        "history": hist,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help="a shard folder (default: data/shards if built, else toy shards)")
    ap.add_argument("--model", default="unet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="steps per epoch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from dirl.cluster import plan_workers
    from dirl.config import load_config

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data = args.data or (ROOT / "data" / "shards" if (ROOT / "data/shards/manifest.json").is_file() else None)
        toy_size = max(64, args.size)
        data_label = str(data) if data else f"toy shards ({toy_size}x{toy_size} synthetic)"
        data = data or toy_shards(work / "shards", n=max(96, args.batch * args.steps), size=toy_size)
        cfg = load_config(
            ROOT / "params.yaml",
            overrides={
                "model.name": args.model,
                "model.input_size": args.size,
                "model.pretrained": "",
                "train.epochs": args.epochs,
                "train.batch_size": args.batch,
                "train.max_steps_per_epoch": args.steps,
                "train.val_every": args.epochs,
                "train.precision": args.precision,
                "train.channels_last": args.channels_last,
                "train.compile": False,
                "train.use_tune_best": False,
                "cluster.num_workers": 1,
                "cluster.min_workers": 0,
                "cluster.storage_path": str(work / "ray_results"),
                "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
                "cluster.address": "",
            },
        )
        threads = plan_workers(cfg, {"CPU": float(os.cpu_count())}).threads_per_worker
        load0 = os.getloadavg()[0]
        bare1 = bare_loop(cfg, data, threads)
        ray_res = ray_loop(cfg, data, work)
        bare2 = bare_loop(cfg, data, threads)
        load1 = os.getloadavg()[0]

    bare_step = statistics.mean([bare1["step_s"], bare2["step_s"]])
    # the training process's own CPU per step: the bare loop minus its in-thread decoding
    bare_compute_cpu = statistics.mean([bare1["cpu_per_step"], bare2["cpu_per_step"]]) - bare1["data_cpu_per_step"]
    res = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        "data": data_label,
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "epochs": args.epochs,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "threads": threads,
        "load_avg_before_after": [round(load0, 2), round(load1, 2)],
        "bare_step_s": [round(bare1["step_s"], 4), round(bare2["step_s"], 4)],
        "ray_step_s": round(ray_res["step_s"], 4),
        "step_overhead_ratio": round(ray_res["step_s"] / bare_step, 3),
        "bare_cpu_per_step_s": [round(bare1["cpu_per_step"], 4), round(bare2["cpu_per_step"], 4)],
        "bare_decode_cpu_per_step_s": round(bare1["data_cpu_per_step"], 4),
        "ray_worker_cpu_per_step_s": round(ray_res["cpu_per_step"], 4),
        "worker_cpu_overhead_ratio": round(ray_res["cpu_per_step"] / bare_compute_cpu, 3),
        "ray_init_s": round(ray_res["init_s"], 2),
        "ray_train_call_s": round(ray_res["train_s"], 2),
        "ray_setup_s": round(ray_res["setup_s"], 2),
        "ray_fit_s": round(ray_res["fit_s"], 2),
        "ray_epochs_s": round(ray_res["epochs_s"], 2),
        "ray_fixed_cost_s": round(ray_res["fixed_s"], 2),
        "ray_epoch_s": [round(r["epoch_s"], 2) for r in ray_res["history"]],
        "bare_epoch_s": [round(e["seconds"], 2) for e in bare1["epochs"]],
    }
    print(json.dumps(res, indent=2))
    print(
        f"\nsteady step: bare {bare1['step_s']:.3f} / {bare2['step_s']:.3f} s, ray {ray_res['step_s']:.3f} s "
        f"-> overhead x{res['step_overhead_ratio']:.2f}; fixed cost of the Ray run {ray_res['fixed_s']:.1f} s "
        f"(ray.init {ray_res['init_s']:.1f} s + train() {ray_res['train_s']:.1f} s - epochs "
        f"{ray_res['epochs_s']:.1f} s)"
    )
    print(
        f"CPU per step of the training process: bare {res['bare_cpu_per_step_s']} s (of which decoding "
        f"{res['bare_decode_cpu_per_step_s']} s), Ray worker {res['ray_worker_cpu_per_step_s']} s (decoding runs "
        f"in Ray Data tasks) -> x{res['worker_cpu_overhead_ratio']:.2f} of the bare compute"
    )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
