"""Data engine benchmark: preprocess and synthesize rows/s on the local engine vs Ray tasks on 1 and 2 worker nodes.

One workspace (COCO-sized photos: ``../shared/data/photos/coco128`` repeated ``--repeat`` times under distinct
names, so the work resembles HCOCO), ingested once. Then each configuration runs ``dirl data preprocess`` and
``dirl data synthesize`` (``run`` of ``dirl.stages.<stage>``) in a fresh child process that prints its figures;
the child is the driver, so its CPU time is the driver's (receiving results, writing the shards):

    local x1       cluster.data_engine local, 1 process (in the driver): the per-core reference
    local x<cores> local pool on every core: the baseline the ratios are taken against
    ray  1 node    pipeline/cluster/local.sh start --workers 1 --cpus-per-node C --head-cpus 0
    ray  2 nodes   ...                              --workers 2 ...

Every run must give the same dataset_hash as the local baseline (checked). Figures: wall rows/s of the whole
stage, rows/s after the first result (without Ray connect / worker start-up), rows per CPU-second of the work
(task CPU in Ray, the pool's children CPU locally), per node and per node-CPU, and the driver's CPU per row
(what bounds one driver however many nodes there are). The machine may have fewer cores than the cluster
declares: per-node figures are CPU-normalised. Ends with projections (assumptions printed with them).

    python benchmarks/bench_data_ray.py                      # 1,456 photos, 1,456 composites: ~6 min on 2 cores
    python benchmarks/bench_data_ray.py --repeat 4           # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = ROOT / "pipeline" / "cluster" / "local.sh"
PHOTOS = ROOT.parent / "shared" / "data" / "photos" / "coco128"

CHILD = """
import importlib, json, os, resource, sys, time
from dirl.config import load_config
from dirl.data import engine
stage, overrides = sys.argv[1], json.loads(sys.argv[2])
cfg = load_config("params.yaml", overrides=overrides)
run = importlib.import_module(f"dirl.stages.{stage}").run
ru0, c0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time(), time.perf_counter()
summary = run(cfg)
wall, driver_cpu = time.perf_counter() - t0, time.process_time() - c0
ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
st = engine.LAST_STATS
out = "data/shards" if stage == "preprocess" else "data/synth"
manifest = json.load(open(os.path.join(out, "manifest.json")))
print(json.dumps({"stage": stage, "rows": manifest["rows"], "dataset_hash": manifest["dataset_hash"],
                  "bytes": manifest["bytes"], "wall": wall, "driver_cpu": driver_cpu,
                  "children_cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
                  "engine": st.engine, "chunks": st.chunks, "nodes": dict(st.nodes), "task_cpu": st.task_cpu_s,
                  "first_s": st.first_s, "map_s": st.seconds, "workers": st.workers, "results": st.results,
                  "first_results": st.first_results, "map_driver_cpu": st.driver_cpu_s}))
"""


def _env_file(path: Path) -> dict[str, str]:
    return dict(
        line[len("export ") :].split("=", 1) for line in path.read_text().splitlines() if line.startswith("export ")
    )


def _local_sh(*args: str, state: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["DIRL_PYTHON"] = sys.executable
    out = subprocess.run(
        ["bash", str(LOCAL_SH), "--state-dir", str(state), *args], capture_output=True, text=True, env=env, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"local.sh {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")


class ClusterCPU:
    """CPU seconds (user + system) used by the cluster's processes while running: the node process groups (raylets,
    agents, GCS) and their descendants (the Ray worker processes, which end with the job): sampled every 0.2 s,
    so a process that exits between samples loses at most that much."""

    def __init__(self, state: Path):
        self.leaders = {int(line.split()[1]) for line in (state / "nodes").read_text().splitlines()}
        self.tick = os.sysconf("SC_CLK_TCK")
        self.base = self._sample()
        self.last: dict = dict(self.base)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _sample(self) -> dict[tuple[int, int], float]:
        procs = {}
        for d in Path("/proc").glob("[0-9]*"):
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # pid -> (ppid, pgid, start time, cpu seconds)
            procs[int(d.name)] = (int(f[1]), int(f[2]), int(f[19]), (int(f[11]) + int(f[12])) / self.tick)
        ours = {pid for pid, (_, pgid, _, _) in procs.items() if pgid in self.leaders}
        grew = True
        while grew:
            new = {pid for pid, (ppid, _, _, _) in procs.items() if ppid in ours and pid not in ours}
            ours |= new
            grew = bool(new)
        return {(pid, procs[pid][2]): procs[pid][3] for pid in ours}

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self.last.update(self._sample())

    def seconds(self) -> float:
        self.stop.set()
        self.thread.join()
        self.last.update(self._sample())
        return sum(cpu - self.base.get(key, 0.0) for key, cpu in self.last.items())


def _run(ws: Path, stage: str, overrides: dict, env: dict | None = None, state: Path | None = None) -> dict:
    sampler = ClusterCPU(state) if state else None
    run = subprocess.run(
        [sys.executable, "-c", CHILD, stage, json.dumps(overrides)],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
    )
    if run.returncode != 0:
        raise RuntimeError(f"{stage} {overrides} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
    res = json.loads(run.stdout.strip().splitlines()[-1])
    res["cluster_cpu"] = sampler.seconds() if sampler else 0.0
    res["load"] = os.getloadavg()[0]
    return res


def _workspace(tmp: Path, repeat: int, size: int, per_image: int) -> Path:
    """Photos: coco128 x ``repeat`` (hard links under distinct names), ingested once."""
    photos = tmp / "photos"
    for sub in ("images", "masks"):
        (photos / sub).mkdir(parents=True)
    for img in sorted((PHOTOS / "images").glob("*.jpg")):
        mask = PHOTOS / "masks" / f"{img.stem}.png"
        if not mask.is_file():
            continue
        for r in range(repeat):
            for src, dst in (
                (img, photos / "images" / f"r{r}_{img.name}"),
                (mask, photos / "masks" / f"r{r}_{img.stem}.png"),
            ):
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    ws = tmp / "ws"
    ws.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(source="photos", photos_dir=str(photos), stored_size=size)
    params["synth"]["per_image"] = per_image
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run(
        [sys.executable, "-m", "dirl.cli", "data", "ingest"],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if run.returncode != 0:
        raise RuntimeError(run.stdout + run.stderr)
    return ws


def _figures(r: dict, nodes: int, cpus_per_node: int) -> dict:
    rows, wall = r["rows"], r["wall"]
    after = rows * (r["results"] - r["first_results"]) / max(r["results"], 1)  # rows after the first chunk's
    f = {
        "rows": rows,
        "wall": wall,
        "wall_rps": rows / wall,
        "first_s": r["first_s"],
        "steady_rps": after / max(r["map_s"] - r["first_s"], 1e-9),  # without start-up
        "rows_per_cpu_s": rows / max(r["task_cpu"], 1e-9),  # CPU inside the per-chunk function only
        "driver_ms_per_row": 1e3 * r["map_driver_cpu"] / max(after, 1),  # the driver's marginal CPU per row
        "bytes_per_row": r["bytes"] / rows,
        "load": r["load"],
    }
    # CPU of everything the engine ran besides the driver: the Ray cluster's processes, or the local pool's workers
    # (spawn + imports included); in-process (x1) the driver did the work
    engine_cpu = r["cluster_cpu"] if r["engine"] == "ray" else (r["children_cpu"] or r["driver_cpu"])
    f["rows_per_engine_cpu_s"] = rows / max(engine_cpu, 1e-9)
    if r["engine"] == "ray":
        f["per_node_rps"] = f["steady_rps"] / nodes
        f["nodes_used"] = len(r["nodes"])
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=16, help="copies of each coco128 photo (default: %(default)s)")
    ap.add_argument("--size", type=int, default=256, help="data.stored_size (default: %(default)s)")
    ap.add_argument("--per-image", type=int, default=1, help="synth.per_image (default: %(default)s)")
    ap.add_argument(
        "--cpus-per-node", type=int, default=1, help="CPUs each worker node declares (default: %(default)s)"
    )
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="worker node counts (default: 1 2)")
    ap.add_argument("--project-nodes", type=int, default=10, help="projection: cluster nodes (default: %(default)s)")
    ap.add_argument("--project-cores", type=int, default=16, help="projection: cores per node (default: %(default)s)")
    args = ap.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"{PHOTOS} is absent: this benchmark needs ../shared/data/photos/coco128")
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-ray-"))
    results: dict[str, dict[str, dict]] = {}
    hashes: dict[str, str] = {}
    try:
        ws = _workspace(tmp, args.repeat, args.size, args.per_image)
        for label, workers in (("local x1", 1), (f"local x{cores}", cores)):
            over = {"cluster.data_engine": "local", "cluster.data_workers": workers}
            results[label] = {}
            for stage in ("preprocess", "synthesize"):
                r = _run(ws, stage, over)
                results[label][stage] = _figures(r, 1, workers)
                hashes.setdefault(stage, r["dataset_hash"])
                assert r["dataset_hash"] == hashes[stage], (label, stage, "rows differ from the local engine")
                print(f"{label:10s} {stage:10s} {results[label][stage]['wall_rps']:8.1f} rows/s", flush=True)
        for n in args.nodes:
            state = tmp / f"cluster-{n}"
            label = f"ray {n} node" + ("s" if n > 1 else "")
            _local_sh(
                "start",
                "--workers",
                str(n),
                "--cpus-per-node",
                str(args.cpus_per_node),
                "--head-cpus",
                "0",
                state=state,
            )
            try:
                env = _env_file(state / "cluster.env")
                over = {"cluster.data_engine": "ray", "cluster.address": env["RAY_ADDRESS"]}
                results[label] = {}
                for stage in ("preprocess", "synthesize"):
                    r = _run(ws, stage, over, env=env, state=state)
                    assert r["dataset_hash"] == hashes[stage], (label, stage, "rows differ from the local engine")
                    results[label][stage] = _figures(r, n, args.cpus_per_node)
                    print(
                        f"{label:10s} {stage:10s} {results[label][stage]['wall_rps']:8.1f} rows/s "
                        f"on {len(r['nodes'])} node(s)",
                        flush=True,
                    )
            finally:
                _local_sh("stop", state=state)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args, cores)


def report(results: dict, args, cores: int) -> None:
    base_label = f"local x{cores}"
    print(f"\n### bench_data_ray — {dt.date.today()} — {platform.node()} ({cores} CPUs, {platform.machine()})")
    print(
        f"`python benchmarks/bench_data_ray.py --repeat {args.repeat} --size {args.size} --per-image "
        f"{args.per_image} --cpus-per-node {args.cpus_per_node}`\n"
    )
    for stage, unit in (("preprocess", "photos"), ("synthesize", "composites")):
        base = results[base_label][stage]
        print(f"{stage} ({base['rows']:,} {unit}, same dataset_hash on every engine)\n")
        print(
            "| engine | wall rows/s | × baseline | rows/s after start-up | start-up s | rows per task CPU-s "
            "| rows per engine CPU-s | per node rows/s | driver CPU ms/row | load avg |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label, res in results.items():
            f = res[stage]
            name = label + (" (baseline)" if label == base_label else "")
            node = f"{f['per_node_rps']:.1f}" if "per_node_rps" in f else "—"
            print(
                f"| {name} | {f['wall_rps']:.1f} | {f['wall_rps'] / base['wall_rps']:.2f}x | {f['steady_rps']:.1f} "
                f"| {f['first_s']:.1f} | {f['rows_per_cpu_s']:.1f} | {f['rows_per_engine_cpu_s']:.1f} | {node} "
                f"| {f['driver_ms_per_row']:.2f} | {f['load']:.1f} |"
            )
        print()
    project(results, args, cores)


def project(results: dict, args, cores: int) -> None:
    """Wall-time projections from the per-CPU work rate and the driver's per-row cost (the 2-node Ray run)."""
    ray_runs = [k for k in results if k.startswith("ray")]
    if not ray_runs:
        return
    src = results[ray_runs[-1]]
    nodes, per = args.project_nodes, args.project_cores
    cpus = nodes * per
    pre, syn = src["preprocess"], src["synthesize"]
    print(
        f"Projections: {nodes} nodes x {per} cores = {cpus} task CPUs and one driver; work rate = rows per task "
        f"CPU-s of `{ray_runs[-1]}` x CPUs (ideal spread), driver = its marginal CPU per row (one core, serial); "
        f"wall ~ max(work, driver) + start-up:"
    )
    # preprocess: an iHarmony4 item decodes + resizes a composite AND its real image, each ~COCO-sized (HCOCO,
    # HFlickr, Hday2night; like the benchmark photos); HAdobe5k (21,597 composites) originals are far larger:
    # 10x the pixels assumed for the heavy case. The 7,237 test composites kept at original size skip the resize
    # and re-encode (cheaper): counted as full items.
    n_ih, n_adobe = 73_146, 21_597
    for label, work in (
        ("COCO-sized images", n_ih * 2),
        ("HAdobe5k at 10x pixels", (n_ih - n_adobe) * 2 + n_adobe * 20),
    ):
        compute = work / (pre["rows_per_cpu_s"] * cpus)
        driver = n_ih * pre["driver_ms_per_row"] / 1e3
        print(
            f"- preprocess iHarmony4 ({n_ih:,} composites, {label}): work {compute:.0f} s, driver {driver:.0f} s "
            f"-> ~{max(compute, driver) / 60:.1f} min + start-up; one {per}-core node: "
            f"~{max(work / (pre['rows_per_cpu_s'] * per), driver) / 60:.1f} min"
        )
    n = 1_000_000
    compute = n / (syn["rows_per_cpu_s"] * cpus)
    driver = n * syn["driver_ms_per_row"] / 1e3
    gb = n * syn["bytes_per_row"] / 1e9
    print(
        f"- synthesize 1,000,000 composites at {args.size}² (params.yaml methods, recolour): work {compute:.0f} s, "
        f"driver {driver:.0f} s -> ~{max(compute, driver) / 60:.1f} min + start-up; {gb:.0f} GB of rows through "
        f"the driver ({gb * 8 / 10:.0f} s at 10 Gbit/s) onto the shared storage"
    )


if __name__ == "__main__":
    main()
