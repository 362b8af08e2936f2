"""Train-step and inference throughput of the registered models under each speed switch.

For every model (or --models) the baseline row is fp32 NCHW; the other rows (channels_last, bf16,
channels_last+bf16, fp16 rows on CUDA, +compile rows with --compile) are reported as ratios to it. All rows run
in one process on identical weights and inputs, their timed steps interleaved round-robin so that load from
other processes hits every row alike. A train step is forward + BCE on every output map (float32, outside
autocast) + backward + Adam step (fused=True: ~10x faster than the default Adam on CPU); inference is a
forward under torch.inference_mode in eval mode. Warm-up steps are excluded; figures come from the median step.
"x" columns are ratios to the baseline in wall-clock images/s; "x (CPU time)" columns are the same ratio in
images per process CPU-second, which stays meaningful on a CPU shared with other jobs (on CUDA, ignore them).
On a shared CPU use --threads 1: oversubscribed OpenMP threads wait at every barrier and slow steps 5-10x.

    python benchmarks/bench_model.py --models dirl_lite unet --size 128 --batch 8
    python benchmarks/bench_model.py --models dirl --size 224 --batch 2 --warmup 1 --steps 3
    python benchmarks/bench_model.py --device cuda --size 256 --batch 16 --compile --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dirl.models import create_model, list_models  # noqa: E402
from dirl.speed import SpeedConfig, autocast, count_flops, make_grad_scaler, prepare_input, prepare_model  # noqa: E402


def parse_config(label: str) -> SpeedConfig:
    """'fp32', 'channels_last', 'bf16', 'channels_last+bf16', '...+compile' -> SpeedConfig."""
    parts = set(label.split("+"))
    precision = next((p for p in ("bf16", "fp16", "fp32") if p in parts), "fp32")
    unknown = parts - {"bf16", "fp16", "fp32", "channels_last", "compile"}
    if unknown:
        raise SystemExit(f"unknown speed switch(es) {sorted(unknown)} in --configs entry {label!r}")
    return SpeedConfig(precision, "channels_last" in parts, "compile" in parts)


def default_configs(device: str, compile_: bool) -> list[str]:
    labels = ["fp32", "channels_last", "bf16", "channels_last+bf16"]
    if device == "cuda":
        labels += ["fp16", "channels_last+fp16"]
    if compile_:
        labels += ["compile", "channels_last+bf16+compile"]
    return labels


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model copy under one speed setting, with its optimizer; times train and inference steps."""

    def __init__(self, base: torch.nn.Module, speed: SpeedConfig, x: torch.Tensor, y: torch.Tensor, device: str):
        self.speed, self.device = speed, device
        self.model = copy.deepcopy(base)
        self.fast = prepare_model(self.model, device, speed)
        self.x, self.y = prepare_input(x.to(device), speed), y.to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, weight_decay=1e-4, fused=True)
        self.scaler = make_grad_scaler(device, speed)
        self.wall: dict[str, list[float]] = {"train": [], "infer": []}
        self.cpu: dict[str, list[float]] = {"train": [], "infer": []}

    def train_step(self) -> None:
        self.fast.train()
        with autocast(self.device, self.speed):
            outs = self.fast(self.x)
        loss = sum(F.binary_cross_entropy(o.float(), self.y) for o in outs)  # float32, outside autocast
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def infer_step(self) -> None:
        self.fast.eval()
        with torch.inference_mode(), autocast(self.device, self.speed):
            self.fast(self.x)

    def step(self, phase: str, record: bool = True) -> None:
        fn = self.train_step if phase == "train" else self.infer_step
        sync(self.device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(self.device)
        if record:
            self.wall[phase].append(time.perf_counter() - w0)
            self.cpu[phase].append(time.process_time() - c0)

    def rate(self, phase: str, clock: str = "wall") -> float:
        """Images per second (wall) or per CPU-second (cpu), from the median step time."""
        times = self.wall[phase] if clock == "wall" else self.cpu[phase]
        return self.x.shape[0] / statistics.median(times)


def bench_model(
    base: torch.nn.Module,
    speeds: list[SpeedConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    device: str,
    warmup: int,
    steps: int,
) -> list[Runner]:
    """Time every setting on copies of `base`, interleaving their steps round-robin (rotating the order) so
    that load from other processes on a shared machine spreads evenly over the settings."""
    runners = [Runner(base, s, x, y, device) for s in speeds]
    for phase in ("train", "infer"):
        for r in runners:
            for _ in range(warmup):
                r.step(phase, record=False)
        for i in range(steps):
            for r in runners[i % len(runners) :] + runners[: i % len(runners)]:
                r.step(phase)
    return runners


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    s = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        s += f", GPU {torch.cuda.get_device_name()}"
    return s


def append_atomic(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(old + text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help=f"models to run (default: all of {list_models()})")
    p.add_argument("--size", type=int, default=128, help="input side in pixels, a multiple of 16 (default 128)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (bf16 autocast) or cuda (AMP)")
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="speed settings to run, e.g. fp32 channels_last bf16 channels_last+bf16 fp16 bf16+compile; "
        "the first is the baseline (default: fp32, channels_last, bf16, channels_last+bf16; "
        "plus fp16 rows on cuda, compile rows with --compile)",
    )
    p.add_argument("--compile", action="store_true", help="add torch.compile rows")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row; the median is reported (default 5)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--flops", action="store_true", help="also report forward GFLOPs per image")
    p.add_argument("--out", type=Path, default=None, help="append the table (with machine, date, command) here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.size % 16:
        p.error(f"--size {args.size} is not a multiple of 16")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or list_models()
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; registered: {list_models()}")
    labels = args.configs or default_configs(args.device, args.compile)
    speeds = [parse_config(lb) for lb in labels]

    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = (torch.rand(args.batch, 1, args.size, args.size) > 0.8).float()
    header = (
        "| model | setting | train img/s | train x | train x (CPU time) | infer img/s | infer x "
        "| infer x (CPU time) |" + (" GFLOPs/img |" if args.flops else "")
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    print(
        f"# {machine()}\n# size {args.size}, batch {args.batch}, device {args.device}, "
        f"warmup {args.warmup}, median of {args.steps}",
        flush=True,
    )
    print("\n".join(rows), flush=True)
    for name in models:
        torch.manual_seed(args.seed)
        base = create_model(name)
        gflops = f" {count_flops(base, args.size) / 1e9:.1f} |" if args.flops else ""
        runners = bench_model(base, speeds, x, y, args.device, args.warmup, args.steps)
        ref = runners[0]
        for r in runners:
            cells = []
            for phase in ("train", "infer"):
                cells += [
                    f"{r.rate(phase):.2f}",
                    f"{r.rate(phase) / ref.rate(phase):.2f}",
                    f"{r.rate(phase, 'cpu') / ref.rate(phase, 'cpu'):.2f}",
                ]
            row = f"| {name} | {r.speed.label} | " + " | ".join(cells) + " |" + gflops
            rows.append(row)
            print(row, flush=True)
        del runners, base
    if args.out:
        cmd = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        text = (
            f"\n### Model throughput, {dt.datetime.now().isoformat(timespec='seconds')}\n\n"
            f"Machine: {machine()}  \nCommand: `python {cmd}`  \n"
            f"Size {args.size}, batch {args.batch}, device {args.device}; ratios (x) are to the "
            f"{speeds[0].label} row; median of {args.steps} steps after {args.warmup} warm-up steps.\n\n"
            + "\n".join(rows)
            + "\n"
        )
        append_atomic(args.out, text)
        print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
