"""Cluster smoke job: one real DDP step per Ray Train worker, spread over distinct nodes.

    python pipeline/cluster/smoke.py --address 192.0.2.2:6379 --storage /shared/dir

Connects to a running Ray cluster, checks how many nodes are alive, then runs a
``ray.train.torch.TorchTrainer`` with ``--workers`` CPU workers placed ``STRICT_SPREAD``
(one per node). Each worker takes one gloo DDP step on a tiny linear model and the workers
exchange their Ray node ids; rank 0 saves a checkpoint under ``--storage``. The last line
printed on stdout is one JSON object:

    {"nodes_alive": 2, "node_ids": ["<rank 0 node>", "<rank 1 node>"],
     "checkpoint": "/shared/dir/<run>/checkpoint_...", "storage_path": "/shared/dir", ...}

The train function lives in this file and is shipped to the workers by value (cloudpickle
pickles ``__main__`` functions whole), so the workers need torch and ray but not this file.
Exit status: 0 on success, 1 when the run fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path


def train_fn(config: dict) -> dict:
    """One DDP step per worker; all ranks learn every rank's node id; rank 0 checkpoints."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    node_id = ray.get_runtime_context().get_node_id()

    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(torch.nn.Linear(4, 1))  # DDP over gloo
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)  # (B, 4)
    loss = model(x).pow(2).mean()  # (B, 1) -> ()
    opt.zero_grad()
    loss.backward()  # gradients all-reduced across the workers
    opt.step()

    node_ids: list[str | None] = [None] * world
    dist.all_gather_object(node_ids, node_id)  # every rank's node id, in rank order
    metrics = {"rank": rank, "loss": float(loss), "node_ids": node_ids, "hostname": os.uname().nodename}

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            state = model.module.state_dict() if hasattr(model, "module") else model.state_dict()  # type: ignore[union-attr]
            torch.save(state, Path(tmp) / "model.pt")
            (Path(tmp) / "nodes.json").write_text(json.dumps(node_ids))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)
    return metrics


def run(address: str, storage: str, workers: int, cpus_per_worker: float, strategy: str) -> dict:
    """Run the smoke job on the cluster at ``address``; return the JSON-able summary."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        alive = [n for n in ray.nodes() if n["Alive"]]
        trainer = TorchTrainer(  # Train V2 at run time; the stubs describe V1
            train_fn,  # type: ignore[arg-type]
            scaling_config=ScalingConfig(
                num_workers=workers,
                resources_per_worker={"CPU": cpus_per_worker},
                placement_strategy=strategy,
            ),
            run_config=RunConfig(name=f"cluster-smoke-{uuid.uuid4().hex[:8]}", storage_path=storage),
        )
        t_fit = time.perf_counter()
        result = trainer.fit()
        fit_s = time.perf_counter() - t_fit
    finally:
        ray.shutdown()
    info = result.return_value or {}  # type: ignore[attr-defined]
    return {
        "nodes_alive": len(alive),
        "alive_node_ids": sorted(n["NodeID"] for n in alive),
        "node_ids": info.get("node_ids", []),
        "loss": info.get("loss"),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "storage_path": storage,
        "fit_s": round(fit_s, 2),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--address", default=os.environ.get("RAY_ADDRESS", ""), help="Ray GCS address host:port (default: $RAY_ADDRESS)"
    )
    ap.add_argument(
        "--storage",
        default=os.environ.get("DIRL_STORAGE_PATH", ""),
        help="shared storage every node reaches: absolute path or URI (default: $DIRL_STORAGE_PATH)",
    )
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers (default: %(default)s)")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU per worker (default: %(default)s)")
    ap.add_argument(
        "--strategy",
        default="STRICT_SPREAD",
        choices=["STRICT_SPREAD", "SPREAD", "PACK"],
        help="placement strategy of the worker group (default: %(default)s)",
    )
    args = ap.parse_args(argv)
    if not args.address:
        ap.error("no cluster address: pass --address host:port or source the cluster's cluster.env")
    if not args.storage or not ("://" in args.storage or os.path.isabs(args.storage)):
        ap.error(
            f"--storage must be an absolute path or a URI, got {args.storage!r} "
            "(pass --storage or set DIRL_STORAGE_PATH)"
        )
    try:
        summary = run(args.address, args.storage, args.workers, args.cpus_per_worker, args.strategy)
    except Exception as e:  # the run failed: say why on one JSON line, keep the traceback on stderr
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
