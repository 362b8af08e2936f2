"""Where the data stages' per-chunk work runs: a local process pool, or Ray tasks across a cluster's nodes.

    for chunk, result in ordered_map(fn, chunks, cfg, workers=4, initializer=init, initargs=(refs,)):
        ...  # (chunk, fn(chunk, *args)) in input order, whichever engine ran it

``fn`` is a pure, module-level function of one chunk (``preprocess._process_chunk``, ``build._synth_chunk``); a
bad item is part of its result (the caller puts it in its :class:`~dirl.data.issues.IssueLog`), while an
exception raised by ``fn`` is a bug: it ends the map in the driver, with the same exception type, after the
results of the chunks before it, and a note naming the chunk. Results come back in input order and the driver
alone writes the output, so the output bytes depend only on ``fn``: the same rows, byte for byte, from either
engine (given the same OpenCV / numpy builds on every node), and the caller's progress bar and issue report are
the same code on both.

Engines (:func:`resolve_engine`): ``cluster.data_engine`` = ``local`` | ``ray`` | ``auto`` (ray when
``cluster.address`` is set).

- ``local``: ``workers`` spawn-started processes (1 = in this process, 0 = all cores), at most ``4 * workers``
  chunks in flight; the initializer runs once per process (in this process when ``workers == 1``). Workers run
  OpenCV single-threaded and exit as soon as the driver dies (even by SIGKILL).
- ``ray``: one Ray task per chunk (1 CPU each, ``SPREAD`` over the nodes), at most ``2 x`` the cluster's CPUs in
  flight, collected in order with ``ray.get``. Ray is started or joined through :func:`dirl.cluster.ray_session`
  (the one place that calls ``ray.init``). The initializer state (e.g. synthesis references) is ``ray.put`` once
  and each worker process runs the initializer once per map (cached by object id); a chunk travels inside its task
  (pickled, in pieces under Ray's 100 KB inline limit, see :func:`_pieces`). A task that dies with its node
  is retried by Ray (``fn`` is pure, so a retry gives the same result). ``cluster.data_workers`` sizes the local
  pool only; on Ray the cluster's CPUs decide.

Ray tasks rather than Ray Data: the per-chunk functions take and return Python objects (item dicts naming files,
``(row | None, problems, notes)`` tuples) that Ray Data would convert to and from Arrow blocks, ordered output
needs ``preserve_order`` in the streaming executor, and each pass costs 1-3 s of set-up (``STACK.md``); a window
of tasks gives order, bounded in-flight work and the same pure function for ~40 lines. Data are not pulled into
a Dataset either: the driver writes the shards as the local engine does.

Files on a cluster: items name files relative to the driver's working folder (``data/raw/...``), and each Ray task
runs in that folder (``chdir`` for the task, back afterwards), so bad-item reasons name the same paths as the
local engine. That folder (the workspace) and the output folder must therefore be on storage every node mounts at
the same path (NFS / EFS / a PVC; on ``pipeline/cluster/local.sh`` the nodes share the machine's disk). The driver
writes the shards into the output folder with plain file I/O, so ``s3://`` outputs are not supported (not
trivial: the staging folder is swapped in with a rename).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context, parent_process
from multiprocessing.connection import wait
from typing import Any

from dirl.cluster import ray_session
from dirl.config import Config

ENGINES = ("local", "ray")
LOCAL_WINDOW = 4  # chunks in flight per local worker process
RAY_WINDOW = 2  # chunks in flight per cluster CPU
INLINE_PIECE = 64 << 10  # bytes per task-argument piece, under Ray's 100 KB inline limit (_pieces)


def resolve_engine(engine: Any = None) -> str:
    """``local`` or ``ray`` from a Config (``cluster.data_engine``; auto = ray iff ``cluster.address``), a name,
    or None (local)."""
    if engine is None:
        return "local"
    if isinstance(engine, str):
        if engine not in ENGINES:
            raise ValueError(f"data engine {engine!r} must be one of {ENGINES}")
        return engine
    kind = engine.cluster.data_engine
    if kind == "auto":
        return "ray" if engine.cluster.address.strip() else "local"
    return resolve_engine(kind)


@dataclasses.dataclass
class MapStats:
    """What one :func:`ordered_map` did (for the stage's log line and the benchmark)."""

    engine: str = "local"
    chunks: int = 0
    results: int = 0  # sum of len(result) over the chunks (items, or rows + problems)
    workers: float = 0  # local processes, or the cluster's CPUs
    nodes: Counter = dataclasses.field(default_factory=Counter)  # node id -> chunks (ray)
    task_cpu_s: float = 0.0  # CPU seconds inside fn, summed over the chunks (the work itself)
    first_s: float = 0.0  # seconds from the start to the first result (start-up: Ray connect, worker spawn)
    first_results: int = 0  # len() of the first chunk's result
    driver_cpu_s: float = 0.0  # this process's CPU from the first result to the end (collecting + the caller's
    # writing): the driver's marginal cost, which bounds one driver however many nodes there are
    seconds: float = 0.0
    _t0: float = dataclasses.field(default=0.0, repr=False)
    _c0: float = dataclasses.field(default=0.0, repr=False)

    def start(self, engine: str) -> None:
        self.engine, self._t0 = engine, time.perf_counter()

    def record(self, result: Any, cpu_s: float, node: str | None = None) -> None:
        n = len(result) if hasattr(result, "__len__") else 1
        if not self.chunks:
            self.first_s, self.first_results, self._c0 = time.perf_counter() - self._t0, n, time.process_time()
        self.chunks += 1
        self.results += n
        self.task_cpu_s += cpu_s
        if node is not None:
            self.nodes[node] += 1

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self.chunks:
            self.driver_cpu_s = time.process_time() - self._c0

    def line(self, desc: str) -> str:
        per = ", ".join(f"{n[:8]}: {c}" for n, c in sorted(self.nodes.items()))
        return (
            f"[{desc}] data engine ray: {self.chunks} tasks on {len(self.nodes)} node(s) ({per}), "
            f"{self.workers:g} cluster CPUs, {self.task_cpu_s:.1f} task CPU-s, {self.seconds:.1f} s"
        )


LAST_STATS = MapStats()  # the stats of the latest ordered_map in this process


def ordered_map(
    fn: Callable,
    chunks: Iterable,
    engine: Any = None,
    *,
    args: tuple = (),
    workers: int = 0,
    initializer: Callable | None = None,
    initargs: tuple = (),
    desc: str = "data",
    stats: MapStats | None = None,
) -> Generator[tuple[Any, Any], None, None]:
    """Yield ``(chunk, fn(chunk, *args))`` for every chunk, in input order, on the resolved engine.

    ``engine``: a Config (``cluster.*`` decides, :func:`resolve_engine`), ``"local"``, ``"ray"`` or None (local).
    ``workers``: local processes (0 = all cores, 1 = in this process). ``initializer(*initargs)`` runs once in each
    process that calls ``fn`` before its first call. ``chunks`` is consumed lazily (bounded in-flight work). A Ray
    map prints one line to stderr at the end (tasks per node); ``stats`` (and ``LAST_STATS``) record it.
    """
    global LAST_STATS
    kind = resolve_engine(engine)
    stats = stats if stats is not None else MapStats()
    stats.start(kind)
    LAST_STATS = stats
    if kind == "ray":
        cfg = engine if not isinstance(engine, str) else None
        yield from _ray_map(fn, chunks, cfg, args, initializer, initargs, stats)
        print(stats.line(desc), file=sys.stderr)
    else:
        workers = workers if workers > 0 else len(os.sched_getaffinity(0))
        yield from _local_map(fn, chunks, args, workers, initializer, initargs, stats)


def _noted(e: BaseException, i: int, where: str) -> BaseException:
    try:
        e.add_note(f"(raised by the data engine's task for chunk {i}, {where})")
    except AttributeError:  # Python < 3.11
        pass
    return e


# ----------------------------------------------------------------------------- local


def _local_setup(initializer: Callable | None, initargs: tuple) -> None:
    """Pool worker set-up: single-threaded OpenCV, exit with the parent (even on SIGKILL), then the initializer."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already
    parent = parent_process()
    if parent is not None:

        def exit_with_parent() -> None:
            wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=exit_with_parent, daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _timed(fn: Callable, chunk: Any, *args: Any) -> tuple[float, Any]:
    c0 = time.process_time()
    result = fn(chunk, *args)
    return time.process_time() - c0, result


def _local_map(fn, chunks, args, workers, initializer, initargs, stats) -> Iterator[tuple[Any, Any]]:
    stats.workers = workers
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for i, chunk in enumerate(chunks):
            try:
                cpu_s, result = _timed(fn, chunk, *args)
            except Exception as e:
                _noted(e, i, "in this process")
                raise
            stats.record(result, cpu_s)
            yield chunk, result
        stats.finish()
        return
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_local_setup, initargs=(initializer, initargs)
    ) as pool:
        pending: deque = deque()

        def take() -> tuple[Any, Any]:
            i, chunk, fut = pending.popleft()
            try:
                cpu_s, result = fut.result()
            except Exception as e:
                _noted(e, i, "local process pool")
                raise
            stats.record(result, cpu_s)
            return chunk, result

        try:
            for i, chunk in enumerate(chunks):
                pending.append((i, chunk, pool.submit(_timed, fn, chunk, *args)))
                while len(pending) >= LOCAL_WINDOW * workers:
                    yield take()
            while pending:
                yield take()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    stats.finish()


# ----------------------------------------------------------------------------- ray

_INIT_DONE: set[str] = set()  # object ids of the initializer states this Ray worker process has applied
_REMOTE = None


def _ray_task(init: list, cwd: str, *parts: bytes) -> tuple[str, float, Any]:
    """One chunk in a Ray worker: initializer (once per state), then ``fn(chunk, *args)`` in the driver's folder.

    ``parts``: the pickled ``(fn, chunk, args)`` in pieces under Ray's inline limit (:func:`_pieces`). ``init`` is
    ``[]`` or ``[ObjectRef]``: wrapped in a list so Ray does not fetch the state for every task.
    Returns ``(node id, CPU seconds in fn, fn's result)``.
    """
    import cv2
    import ray

    fn, chunk, args = pickle.loads(b"".join(parts))
    node = ray.get_runtime_context().get_node_id()
    if init and init[0].hex() not in _INIT_DONE:
        cv2.setNumThreads(1)  # one task per CPU
        initializer, initargs = ray.get(init[0])
        initializer(*initargs)
        _INIT_DONE.add(init[0].hex())
    elif not init:
        cv2.setNumThreads(1)
    before = os.getcwd()
    try:
        os.chdir(cwd)
    except OSError as e:
        raise RuntimeError(
            f"Ray node {node[:12]} cannot enter the driver's working folder {cwd} ({e}): the data "
            f"stages on Ray need the workspace on storage every node mounts at the same path"
        ) from None
    try:
        cpu_s, result = _timed(fn, chunk, *args)
    finally:
        os.chdir(before)
    return node, cpu_s, result


def _pieces(obj: Any) -> list[bytes]:
    """``obj`` pickled, in pieces of at most ``INLINE_PIECE`` bytes.

    Ray sends a task argument under 100 KB inside the task itself, and a larger one through the object store. Measured
    on Ray 2.60 (local.sh, 2 worker nodes): tasks whose argument AND result both go through the object store stall
    ~1 s each (300 KB in / 300 KB out: 2 tasks/s instead of 19); the same bytes as 4 inline pieces run at full speed.
    A synthesis chunk carries its photos' bytes (~170 KB for 8 photos), so the chunk travels inline in pieces.
    """
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return [data[i : i + INLINE_PIECE] for i in range(0, len(data), INLINE_PIECE)] or [b""]


def _ray_map(fn, chunks, cfg, args, initializer, initargs, stats) -> Iterator[tuple[Any, Any]]:
    import ray

    global _REMOTE
    with ray_session(cfg if cfg is not None else Config()) as resources:
        cpus = float(resources.get("CPU", 0.0))
        if cpus < 1:
            raise RuntimeError(
                f"the Ray cluster has no CPU for the data tasks (resources {resources}): give the "
                f"worker nodes CPUs, or set cluster.data_engine: local"
            )
        stats.workers = cpus
        if _REMOTE is None:
            _REMOTE = ray.remote(_ray_task)
        task = _REMOTE.options(
            num_cpus=1, scheduling_strategy="SPREAD", name=f"dirl-data:{getattr(fn, '__qualname__', 'fn')}"
        )
        init = [ray.put((initializer, initargs))] if initializer is not None else []
        cwd = os.getcwd()
        window = max(2, int(RAY_WINDOW * cpus))
        pending: deque = deque()

        def take() -> tuple[Any, Any]:
            i, chunk, ref = pending.popleft()
            try:
                node, cpu_s, result = ray.get(ref)
            except Exception as e:
                _noted(e, i, "Ray task")
                raise
            stats.record(result, cpu_s, node)
            return chunk, result

        try:
            for i, chunk in enumerate(chunks):
                pending.append((i, chunk, task.remote(init, cwd, *_pieces((fn, chunk, args)))))
                while len(pending) >= window:
                    yield take()
            while pending:
                yield take()
        except BaseException:
            for _, _, ref in pending:
                try:
                    ray.cancel(ref)
                except Exception:
                    pass
            raise
        stats.finish()
