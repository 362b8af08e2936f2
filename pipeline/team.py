#!/usr/bin/env python3
"""The team tracking and storage stack on this machine, for trying the team profile and for the tests.

    python pipeline/team.py up        start PostgreSQL, the S3 server and `mlflow server`; print the exports
    python pipeline/team.py status    each service: pid, alive, healthy (exit 1 if one is not)
    python pipeline/team.py env       print the exports again (--json: as a JSON object)
    python pipeline/team.py down      stop the three services (--purge: also delete the state, i.e. the database)

What runs (all on 127.0.0.1, each started and stopped BY PID, pid files in the state dir, default ``.team/``):

- ``postgres`` from the OS packages (``initdb``/``postgres`` on PATH or under /usr/lib/postgresql/*/bin), a
  data dir in the state dir, password authentication: MLflow's backend store (runs, metrics, the registry).
  As root it runs as the unprivileged ``postgres`` (else ``nobody``) user, since PostgreSQL refuses root.
- ``moto_server`` (``python -m moto.server``, PyPI ``moto[server]``): an S3-compatible HTTP server, standing in
  for MinIO, which cannot be installed here. Its objects live IN MEMORY: ``down`` loses the bucket (the database
  keeps its runs, whose artifacts are then gone; ``down --purge`` gives a clean slate).
- ``mlflow server --backend-store-uri postgresql://... --artifacts-destination s3://<bucket>/mlartifacts``: clients
  talk HTTP to it only (it proxies artifacts to the bucket).

One bucket holds everything: ``mlartifacts/`` (MLflow), ``ray_results/`` (Ray Train/Tune checkpoints, param
``cluster.storage_path``), ``dvc/`` (the DVC remote) and whatever raw archives you upload (``data.iharmony4.archives``
takes ``s3://`` URIs). Clients find the endpoint and keys in the environment that ``up``/``env`` print:
``AWS_ENDPOINT_URL`` is read by boto3, s3fs (DVC, the archive downloader) and pyarrow (Ray's storage);
``MLFLOW_S3_ENDPOINT_URL`` by MLflow's S3 artifact repository. ``eval "$(python pipeline/team.py env)"``.

With Docker, ``docker compose up -d`` (docker-compose.yml: postgres, minio, mlflow) gives the same endpoints and
keys on the same ports, so the same exports and ``params/team.yaml`` work.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEFAULTS = {
    "postgres_port": 15432,
    "s3_port": 9000,
    "mlflow_port": 5050,
    "bucket": "dirl-team",
    "access_key": "dirl-team",
    "secret_key": "dirl-team-secret",
    "region": "us-east-1",
    "db_user": "mlflow",
    "db_name": "mlflow",
}
SERVICES = ("postgres", "s3", "mlflow")  # start order; stopped in reverse
TIMEOUTS = {"postgres": 60.0, "s3": 60.0, "mlflow": 240.0}


class TeamError(RuntimeError):
    """Something the user must fix; the message says what."""


def log(msg: str) -> None:
    print(f"team: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- state


class State:
    """The state dir: team.json (ports, keys), pids/<service>.json, logs/<service>.log, postgres data."""

    def __init__(self, path: str | os.PathLike):
        self.dir = Path(path).resolve()
        self.conf_path = self.dir / "team.json"

    def load(self) -> dict | None:
        if not self.conf_path.is_file():
            return None
        return json.loads(self.conf_path.read_text())

    def save(self, conf: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700 if os.geteuid() != 0 else 0o755)  # postgres (another user as root) must enter
        tmp = self.conf_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the database password
        with os.fdopen(fd, "w") as f:
            json.dump(conf, f, indent=2)
        os.replace(tmp, self.conf_path)

    def pid_file(self, service: str) -> Path:
        return self.dir / "pids" / f"{service}.json"

    def log_file(self, service: str) -> Path:
        return self.dir / "logs" / f"{service}.log"


# ----------------------------------------------------------------------------- processes, by pid only


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None when there is no such process.
    Recorded with the pid, so that a pid reused by another process is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie: exited, not yet reaped
        return None
    return int(fields[19])


def _group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` (a service and its children, e.g. mlflow's workers)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(p.name))
    return out


def read_pid(state: State, service: str) -> dict | None:
    f = state.pid_file(service)
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except ValueError:
        return None


def alive(state: State, service: str) -> int | None:
    """The service's pid when the recorded process is still the one we started, else None."""
    rec = read_pid(state, service)
    if rec and _start_time(rec["pid"]) == rec["start_time"]:
        return rec["pid"]
    return None


def spawn(state: State, service: str, cmd: list[str], env: dict, user: str | None = None) -> int:
    """Start ``cmd`` in its own session (its pid is its process group), log to logs/<service>.log, record the pid."""
    logf = state.log_file(service)
    logf.parent.mkdir(parents=True, exist_ok=True)
    state.pid_file(service).parent.mkdir(parents=True, exist_ok=True)
    extra: dict = {}
    if user:
        pw = pwd.getpwnam(user)
        extra = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    with open(logf, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
            **extra,
        )
    st = None
    for _ in range(100):
        st = _start_time(proc.pid)
        if st is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    rec = {"pid": proc.pid, "start_time": st, "cmd": cmd, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    state.pid_file(service).write_text(json.dumps(rec, indent=2))
    return proc.pid


def stop(state: State, service: str, timeout: float = 30.0) -> str:
    """Stop the service we started (the pid in its pid file and that pid's process group), gently first.

    A pid whose start time differs from the recorded one belongs to another process now: it is left alone.
    Once the leader has exited, its pid cannot be reused while processes of its group remain, so the group
    members still found are ours."""
    rec = read_pid(state, service)
    if rec is None:
        return "not running (no pid file)"
    pid = rec["pid"]
    leader = _start_time(pid) == rec["start_time"]
    members = _group_members(pid) if leader or _start_time(pid) is None else []
    if not leader and not members:
        state.pid_file(service).unlink(missing_ok=True)
        return f"not running (pid {pid} gone)"
    # postgres: SIGINT = "fast" shutdown (rolls back open transactions, checkpoints, exits); the others: SIGTERM
    sig = signal.SIGINT if service == "postgres" else signal.SIGTERM
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_members(pid) and _start_time(pid) != rec["start_time"]:
            break
        time.sleep(0.1)
    else:
        log(f"{service} (pid {pid}) did not stop within {timeout:.0f} s: SIGKILL")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
    state.pid_file(service).unlink(missing_ok=True)
    return f"stopped (pid {pid})"


# ----------------------------------------------------------------------------- helpers


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).is_file():
            return str(d / name)
    raise TeamError(
        f"PostgreSQL's `{name}` was not found (PATH, /usr/lib/postgresql/*/bin): install the OS package "
        f"(`apt-get install postgresql`), or use docker-compose.yml"
    )


def pg_user() -> str | None:
    """The user postgres runs as: the current one, or an unprivileged one when we are root (PostgreSQL refuses)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise TeamError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")


def venv_bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise TeamError(f"`{name}` not found beside {sys.executable} nor on PATH: pip install -e '.[team]'")
    return found


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def urls(conf: dict) -> dict:
    return {
        "s3": f"http://{HOST}:{conf['s3_port']}",
        "mlflow": f"http://{HOST}:{conf['mlflow_port']}",
        # the driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, the team extra has psycopg2
        "backend": (
            f"postgresql+psycopg2://{conf['db_user']}:{conf['db_password']}@{HOST}:{conf['postgres_port']}/"
            f"{conf['db_name']}"
        ),
    }


def client_env(conf: dict) -> dict[str, str]:
    """The environment every client of the stack needs (the pipeline, dvc, mlflow, Ray workers)."""
    u = urls(conf)
    b = conf["bucket"]
    return {
        "MLFLOW_TRACKING_URI": u["mlflow"],
        "MLFLOW_S3_ENDPOINT_URL": u["s3"],
        "AWS_ENDPOINT_URL": u["s3"],
        "AWS_ACCESS_KEY_ID": conf["access_key"],
        "AWS_SECRET_ACCESS_KEY": conf["secret_key"],
        "AWS_DEFAULT_REGION": conf["region"],
        "DIRL_STORAGE_PATH": f"s3://{b}/ray_results",
        "DIRL_TEAM_BUCKET": b,
        "DIRL_TEAM_DVC_REMOTE": f"s3://{b}/dvc",
        "DIRL_TEAM_BACKEND_STORE_URI": u["backend"],
    }


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# ----------------------------------------------------------------------------- services


def pg_connect(conf: dict, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=HOST,
        port=conf["postgres_port"],
        user=conf["db_user"],
        password=conf["db_password"],
        dbname=dbname,
        connect_timeout=3,
    )


def pg_healthy(conf: dict, dbname: str = "postgres") -> bool:
    try:
        pg_connect(conf, dbname).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not (yet) up"
        return False


def pg_data_dir(state: State, conf: dict) -> Path:
    return Path(conf["pg_data"]) if conf.get("pg_data") else state.dir / "pgdata"


def start_postgres(state: State, conf: dict) -> None:
    data = pg_data_dir(state, conf)
    user = pg_user()
    if not (data / "PG_VERSION").is_file():
        if data.exists() and any(data.iterdir()):
            raise TeamError(f"{data} exists but holds no PostgreSQL cluster; remove it or `down --purge`")
        data.mkdir(parents=True, exist_ok=True)
        pwfile = data.parent / ".pgpass.tmp"
        pwfile.write_text(conf["db_password"] + "\n")
        if user:
            pw = pwd.getpwnam(user)
            os.chown(data, pw.pw_uid, pw.pw_gid)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            if subprocess.run(["test", "-w", str(data)], user=pw.pw_uid, group=pw.pw_gid).returncode != 0:
                pwfile.unlink()
                raise TeamError(
                    f"PostgreSQL runs as {user!r} (we are root) and cannot reach {data}: a parent folder "
                    f"is closed to other users; pass --state-dir in a folder it can enter"
                )
        os.chmod(data, 0o700)
        os.chmod(pwfile, 0o600)
        log(f"initdb {data}")
        cmd = [
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            conf["db_user"],
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
        ]
        account = pwd.getpwnam(user) if user else None
        r = subprocess.run(  # type: ignore[call-overload]  # user/group as keyword arguments from a dict
            cmd,
            capture_output=True,
            text=True,
            cwd="/",
            **({"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}),
        )
        pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise TeamError(f"initdb failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    cmd = [
        pg_bin("postgres"),
        "-D",
        str(data),
        "-p",
        str(conf["postgres_port"]),
        "-c",
        f"listen_addresses={HOST}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=50",
    ]
    spawn(state, "postgres", cmd, _base_env(), user=user)


def ensure_database(conf: dict) -> None:
    conn = pg_connect(conf)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (conf["db_name"],))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{conf["db_name"]}"')
                log(f"created database {conf['db_name']}")
    finally:
        conn.close()


def start_s3(state: State, conf: dict) -> None:
    cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(conf["s3_port"])]
    spawn(state, "s3", cmd, _base_env())


def ensure_bucket(conf: dict) -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=urls(conf)["s3"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf["region"],
    )
    names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if conf["bucket"] not in names:
        s3.create_bucket(Bucket=conf["bucket"])
        log(f"created bucket s3://{conf['bucket']}")


def start_mlflow(state: State, conf: dict) -> None:
    u = urls(conf)
    env = {
        **_base_env(),
        **client_env(conf),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI")
    env["MLFLOW_BACKEND_STORE_URI"] = u["backend"]  # = --backend-store-uri, without the password in `ps`
    cmd = [
        venv_bin("mlflow"),
        "server",
        "--artifacts-destination",
        f"s3://{conf['bucket']}/mlartifacts",
        "--host",
        HOST,
        "--port",
        str(conf["mlflow_port"]),
        "--workers",
        "1",
    ]
    spawn(state, "mlflow", cmd, env)


def healthy(service: str, conf: dict) -> bool:
    u = urls(conf)
    if service == "postgres":
        return pg_healthy(conf)
    if service == "s3":
        return http_ok(u["s3"] + "/")
    return http_ok(u["mlflow"] + "/health")


def wait_healthy(state: State, service: str, conf: dict) -> float:
    t0 = time.monotonic()
    deadline = t0 + TIMEOUTS[service]
    while time.monotonic() < deadline:
        if healthy(service, conf):
            return time.monotonic() - t0
        if alive(state, service) is None:
            raise TeamError(
                f"{service} exited while starting; the end of {state.log_file(service)}:\n"
                + tail(state.log_file(service))
            )
        time.sleep(0.25)
    raise TeamError(
        f"{service} not healthy after {TIMEOUTS[service]:.0f} s; the end of "
        f"{state.log_file(service)}:\n" + tail(state.log_file(service))
    )


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


# ----------------------------------------------------------------------------- commands


def resolve_conf(state: State, args) -> dict:
    conf = state.load() or {}
    for key in ("postgres_port", "s3_port", "mlflow_port", "bucket"):
        given = getattr(args, key, None)
        if given is not None:
            conf[key] = free_port() if given == 0 else given
    for key, value in DEFAULTS.items():
        conf.setdefault(key, value)
    conf.setdefault("db_password", secrets.token_urlsafe(18))
    if "pg_data" not in conf and pg_user():
        # PostgreSQL runs as another user: its data dir must be in a folder that user can enter
        probe = state.dir
        pw = pwd.getpwnam(pg_user() or "")
        state.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state.dir, 0o755)
        if subprocess.run(["test", "-x", str(probe)], user=pw.pw_uid, group=pw.pw_gid).returncode != 0:
            import hashlib
            import tempfile

            tag = hashlib.sha256(str(state.dir).encode()).hexdigest()[:10]
            conf["pg_data"] = str(Path(tempfile.gettempdir()) / f"dirl-team-pg-{tag}")
            log(f"{state.dir} is not reachable by user {pg_user()!r}: PostgreSQL data in {conf['pg_data']}")
    return conf


def cmd_up(args) -> int:
    state = State(args.state_dir)
    conf = resolve_conf(state, args)
    state.save(conf)
    if args.fresh_s3_warning and (pg_data_dir(state, conf) / "PG_VERSION").is_file() and alive(state, "s3") is None:
        log(
            "note: the database keeps the runs of an earlier `up`, but the S3 server starts empty (moto keeps its "
            "objects in memory): their artifacts are gone; `down --purge` for a clean slate"
        )
    starters = {"postgres": start_postgres, "s3": start_s3, "mlflow": start_mlflow}
    port_of = {"postgres": "postgres_port", "s3": "s3_port", "mlflow": "mlflow_port"}
    t_all = time.monotonic()
    try:
        for service in SERVICES:
            if alive(state, service):
                if healthy(service, conf):
                    log(f"{service}: already up (pid {alive(state, service)})")
                    continue
                log(f"{service}: running but not healthy yet (pid {alive(state, service)}), waiting")
            else:
                port = conf[port_of[service]]
                if not port_free(port):
                    raise TeamError(
                        f"{service}: port {HOST}:{port} is taken by another program; pass "
                        f"--{port_of[service].replace('_', '-')} N (0 = any free port)"
                    )
                starters[service](state, conf)
            took = wait_healthy(state, service, conf)
            log(f"{service}: healthy in {took:.1f} s (pid {alive(state, service)}, port {conf[port_of[service]]})")
            if service == "postgres":
                ensure_database(conf)
            elif service == "s3":
                ensure_bucket(conf)
    except BaseException:
        if not args.keep_on_failure:
            for service in reversed(SERVICES):
                if alive(state, service) or read_pid(state, service):
                    log(f"{service}: {stop(state, service)}")
        raise
    write_env_file(state, conf)
    log(f"all up in {time.monotonic() - t_all:.1f} s; the exports (also in {state.dir / 'team.env'}):")
    print(render_env(conf), flush=True)
    return 0


def cmd_down(args) -> int:
    state = State(args.state_dir)
    for service in reversed(SERVICES):
        log(f"{service}: {stop(state, service)}")
    if args.purge:
        conf = state.load() or {}
        if conf.get("pg_data"):
            shutil.rmtree(conf["pg_data"], ignore_errors=True)
        shutil.rmtree(state.dir, ignore_errors=True)
        log(f"removed {state.dir}")
    return 0


def cmd_status(args) -> int:
    state = State(args.state_dir)
    conf = state.load()
    if conf is None:
        print(f"no team stack in {state.dir} (run `up`)")
        return 1
    report, ok = {}, True
    for service in SERVICES:
        pid = alive(state, service)
        h = bool(pid) and healthy(service, conf)
        ok &= h
        report[service] = {"pid": pid, "alive": bool(pid), "healthy": h, "log": str(state.log_file(service))}
    if args.json:
        print(json.dumps({"state_dir": str(state.dir), "healthy": ok, "services": report, **urls(conf)}, indent=2))
    else:
        for service, r in report.items():
            print(f"{service:9s} pid {r['pid'] or '-':>8}  {'healthy' if r['healthy'] else 'DOWN'}  log {r['log']}")
    return 0 if ok else 1


def render_env(conf: dict) -> str:
    env = client_env(conf)
    lines = [f"export {k}={v}" for k, v in env.items()]
    lines += [
        f"# DVC remote (once per clone):  dvc remote add -d team {env['DIRL_TEAM_DVC_REMOTE']} && "
        f"dvc remote modify team endpointurl {env['AWS_ENDPOINT_URL']}",
        f"# params: mlflow.tracking_uri={env['MLFLOW_TRACKING_URI']} cluster.storage_path={env['DIRL_STORAGE_PATH']} "
        f"(params/team.yaml)",
    ]
    return "\n".join(lines)


def write_env_file(state: State, conf: dict) -> None:
    path = state.dir / "team.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_env(conf) + "\n")


def cmd_env(args) -> int:
    state = State(args.state_dir)
    conf = state.load()
    if conf is None:
        raise TeamError(f"no team stack in {state.dir}: run `up` first")
    if args.json:
        print(json.dumps(client_env(conf), indent=2))
    else:
        print(render_env(conf))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipeline/team.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
        epilog='Typical use:  eval "$(python pipeline/team.py up)"; dvc repro ...; python pipeline/team.py down\n'
        "or: make team-up / make team-down (then `source .team/team.env`)",
    )
    ap.add_argument(
        "--state-dir",
        default=os.environ.get("DIRL_TEAM_DIR", str(ROOT / ".team")),
        help="pid files, logs, ports and keys, the database (default: $DIRL_TEAM_DIR or %(default)s)",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the stack (or what of it is down), wait until healthy, print the exports")
    up.add_argument("--postgres-port", type=int, help=f"default {DEFAULTS['postgres_port']} (0 = any free port)")
    up.add_argument("--s3-port", type=int, help=f"default {DEFAULTS['s3_port']} (0 = any free port)")
    up.add_argument("--mlflow-port", type=int, help=f"default {DEFAULTS['mlflow_port']} (0 = any free port)")
    up.add_argument("--bucket", help=f"default {DEFAULTS['bucket']}")
    up.add_argument("--keep-on-failure", action="store_true", help="leave started services running if one fails")
    up.add_argument("--no-fresh-s3-warning", dest="fresh_s3_warning", action="store_false", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the services started by `up` (by their recorded pids)")
    down.add_argument("--purge", action="store_true", help="also delete the state dir: the database, logs, keys")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="pid, alive and healthy per service; exit 1 unless all are healthy")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    env = sub.add_parser("env", help='print the exports (`eval "$(python pipeline/team.py env)"`)')
    env.add_argument("--json", action="store_true", help="a JSON object instead of shell exports")
    env.set_defaults(func=cmd_env)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except TeamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
