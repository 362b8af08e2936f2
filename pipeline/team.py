#!/usr/bin/env python3
"""The team tracking and storage stack on this machine, for trying the team profile and for the tests.

    python pipeline/team.py up        start PostgreSQL, the S3 server and `mlflow server` (what of them is down)
    python pipeline/team.py status    port and health of each (exit 1 unless all are healthy; --json)
    python pipeline/team.py env       print the exports again (--json: as a JSON object)
    python pipeline/team.py down      stop the three (--purge: also delete the state dir, i.e. the database)

All on 127.0.0.1, state in the state dir (default ``.team/``). PostgreSQL (OS packages; MLflow's backend store)
runs under its own ``pg_ctl``, as the unprivileged ``postgres`` (else ``nobody``) user when we are root. The two
HTTP servers of ``pipeline/team.Procfile`` (moto's S3 server, ``mlflow server``) run under one detached ``honcho
start``, its pid in ``honcho.pid``. This file holds what is specific to the project: ports and keys (team.json),
the database and the bucket, the health checks and the exports (``eval "$(python pipeline/team.py env)"``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
PROCFILE = ROOT / "pipeline" / "team.Procfile"
HOST = "127.0.0.1"
SERVICES = ("postgres", "s3", "mlflow")  # s3 and mlflow: the Procfile's names
DEFAULTS: dict[str, Any] = {"postgres_port": 15432, "s3_port": 9000, "mlflow_port": 5050, "bucket": "dirl-team"}
DEFAULTS |= {"access_key": "dirl-team", "secret_key": "dirl-team-secret", "region": "us-east-1"}
DEFAULTS |= {"db_user": "mlflow", "db_name": "mlflow"}
TIMEOUTS = {"postgres": 60, "s3": 60, "mlflow": 240}


class TeamError(RuntimeError):
    """Something the user must fix; the message says what."""


def log(msg: str) -> None:
    print(f"team: {msg}", file=sys.stderr, flush=True)


class State:
    """The state dir: team.json (ports, keys), servers.env (honcho's), team.env, honcho.pid, logs/, the database."""

    def __init__(self, path: str | os.PathLike):
        self.dir = Path(path).resolve()
        self.honcho_pid = self.dir / "honcho.pid"

    def load(self) -> dict | None:
        path = self.dir / "team.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, name: str, text: str) -> None:
        """Write a file readable by us only (they hold the database password)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755 if pg_account() else 0o700)  # PostgreSQL's user must enter
        (self.dir / name).touch(mode=0o600)
        (self.dir / name).write_text(text)

    def log_file(self, service: str) -> Path:
        return self.dir / "logs" / ("postgres.log" if service == "postgres" else "servers.log")

    def tail(self, service: str, n: int = 30) -> str:
        path = self.log_file(service)
        lines = path.read_text(errors="replace").splitlines()[-n:] if path.is_file() else ["(no log)"]
        return f"the end of {path}:\n" + "\n".join(lines)


def free_port(port: int = 0) -> int | None:
    """``port`` if it is free on HOST (0: a free one the system picks), None if a program listens there."""
    try:
        with socket.create_server((HOST, port)) as s:  # SO_REUSEADDR: a closed server's TIME_WAIT does not count
            return s.getsockname()[1]
    except OSError:
        return None


def client_env(conf: dict) -> dict[str, str]:
    """The environment every client of the stack needs (the pipeline, dvc, mlflow, Ray workers)."""
    s3, b = f"http://{HOST}:{conf['s3_port']}", conf["bucket"]
    # the driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, the team extra has psycopg2
    db = f"{conf['db_user']}:{conf['db_password']}@{HOST}:{conf['postgres_port']}/{conf['db_name']}"
    return {
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{conf['mlflow_port']}",
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": conf["access_key"],
        "AWS_SECRET_ACCESS_KEY": conf["secret_key"],
        "AWS_DEFAULT_REGION": conf["region"],
        "DIRL_STORAGE_PATH": f"s3://{b}/ray_results",
        "DIRL_TEAM_BUCKET": b,
        "DIRL_TEAM_DVC_REMOTE": f"s3://{b}/dvc",
        "DIRL_TEAM_BACKEND_STORE_URI": f"postgresql+psycopg2://{db}",
    }


def render_env(conf: dict) -> str:
    env = client_env(conf)
    remote = f"dvc remote add -d team {env['DIRL_TEAM_DVC_REMOTE']}"
    return "".join(f"export {k}={v}\n" for k, v in env.items()) + (
        f"# DVC remote (once per clone):  {remote} && dvc remote modify team endpointurl {env['AWS_ENDPOINT_URL']}\n"
        f"# params: mlflow.tracking_uri={env['MLFLOW_TRACKING_URI']} cluster.storage_path={env['DIRL_STORAGE_PATH']}"
        " (params/team.yaml)"
    )


def healthy(service: str, conf: dict) -> bool:
    """PostgreSQL accepts our login, the S3 server answers / and mlflow /health."""
    try:
        if service == "postgres":
            pg_connect(conf, "postgres").close()
            return True
        url = client_env(conf)["AWS_ENDPOINT_URL" if service == "s3" else "MLFLOW_TRACKING_URI"]
        with urllib.request.urlopen(url + ("/health" if service == "mlflow" else "/"), timeout=5) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means "not (yet) up"
        return False


# ----------------------------------------------------------------------------- PostgreSQL, by pg_ctl


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))[::-1]), None)
    if not found:
        raise TeamError(f"PostgreSQL's `{name}` is not on PATH: `apt-get install postgresql`, or docker-compose.yml")
    return str(found)


def pg_account() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (it refuses root); None: the current user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return pwd.getpwnam("nobody")


def as_pg(**kw: Any) -> dict[str, Any]:
    """subprocess keyword arguments that run a PostgreSQL program as ``pg_account()``, from /."""
    pw = pg_account()
    return {"cwd": "/", **kw, **({"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []} if pw else {})}


def pg_ctl(conf: dict, *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([pg_bin("pg_ctl"), *args, "-D", conf["pg_data"]], **as_pg(text=True, **kw))


def pg_pid(conf: dict) -> int | None:
    """The postmaster's pid (from PostgreSQL's own pid file) while `pg_ctl status` says it runs."""
    if pg_ctl(conf, "status", capture_output=True).returncode != 0:  # 3: not running, 4: no cluster
        return None
    return int((Path(conf["pg_data"]) / "postmaster.pid").read_text().split()[0])


def pg_connect(conf: dict, dbname: str):
    import psycopg2

    user, password, port = conf["db_user"], conf["db_password"], conf["postgres_port"]
    return psycopg2.connect(host=HOST, port=port, user=user, password=password, dbname=dbname, connect_timeout=3)


def start_postgres(state: State, conf: dict) -> None:
    """initdb the first time; `pg_ctl start -w` (it waits until the server accepts connections); the database."""
    data = Path(conf["pg_data"])
    if not (data / "PG_VERSION").is_file():
        if data.exists() and any(data.iterdir()):
            raise TeamError(f"{data} exists but holds no PostgreSQL cluster; remove it or `down --purge`")
        data.mkdir(parents=True, exist_ok=True)
        pwfile = data.parent / f".{data.name}.pw.tmp"
        pwfile.write_text(conf["db_password"] + "\n")
        for path, mode in ((data, 0o700), (pwfile, 0o600)):
            os.chmod(path, mode)
            if pw := pg_account():
                os.chown(path, pw.pw_uid, pw.pw_gid)
        log(f"initdb {data}")
        cmd = [pg_bin("initdb"), "-D", str(data), "-U", conf["db_user"], f"--pwfile={pwfile}", "--auth=scram-sha-256"]
        r = subprocess.run([*cmd, "-E", "UTF8", "--no-locale"], **as_pg(capture_output=True, text=True))
        pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise TeamError(f"initdb failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    logf = state.log_file("postgres")
    logf.parent.mkdir(parents=True, exist_ok=True)
    opts = f"-p {conf['postgres_port']} -c listen_addresses={HOST} -c unix_socket_directories='' -c max_connections=50"
    with open(logf, "ab") as out:  # opened here, not `pg_ctl -l`: PostgreSQL's user may not reach the state dir
        r = pg_ctl(conf, "start", "-w", "-t", str(TIMEOUTS["postgres"]), "-o", opts, stdout=out, stderr=out)
    if r.returncode != 0:
        raise TeamError(f"pg_ctl start failed ({r.returncode}); {state.tail('postgres')}")
    conn = pg_connect(conf, "postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (conf["db_name"],))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{conf["db_name"]}"')
            log(f"created database {conf['db_name']}")
    conn.close()


def stop_postgres(conf: dict) -> str:
    if pg_pid(conf) is None:
        return "not running"
    r = pg_ctl(conf, "stop", "-m", "fast", "-w", "-t", "60", capture_output=True)  # fast: rolls back, checkpoints
    return "stopped (pg_ctl stop -m fast)" if r.returncode == 0 else f"pg_ctl stop failed: {r.stderr.strip()}"


# ----------------------------------------------------------------------------- the S3 server and mlflow, by honcho


def honcho(state: State) -> psutil.Process | None:
    """The honcho that `up` started for this state dir, while it runs (its command line names our servers.env)."""
    try:
        proc = psutil.Process(int(state.honcho_pid.read_text()))
        return proc if str(state.dir / "servers.env") in proc.cmdline() else None
    except (FileNotFoundError, ValueError, psutil.Error):  # psutil.ZombieProcess: it exited under us
        return None


def start_servers(state: State, conf: dict) -> None:
    """``honcho start`` on the Procfile in a session of its own (it outlives this command), output to servers.log;
    the Procfile's variables in servers.env (not on a command line: the database password)."""
    env = {k: v for k, v in client_env(conf).items() if k.startswith(("AWS_", "MLFLOW_S3_"))}
    env |= {"TEAM_HOST": HOST, "TEAM_S3_PORT": conf["s3_port"], "TEAM_MLFLOW_PORT": conf["mlflow_port"]}
    env |= {"TEAM_BUCKET": conf["bucket"], "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env |= {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env["MLFLOW_BACKEND_STORE_URI"] = client_env(conf)["DIRL_TEAM_BACKEND_STORE_URI"]  # mlflow's --backend-store-uri
    state.save("servers.env", "".join(f"{k}={v}\n" for k, v in env.items()))
    cmd = [sys.executable, "-m", "honcho", "start", "-f", str(PROCFILE), "-e", str(state.dir / "servers.env")]
    cmd += ["-d", str(ROOT), "--no-colour"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"  # the Procfile's python, mlflow
    state.log_file("servers").parent.mkdir(parents=True, exist_ok=True)
    with open(state.log_file("servers"), "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=base, start_new_session=True)
    state.honcho_pid.write_text(f"{proc.pid}\n")


def stop_servers(state: State, timeout: float = 30.0) -> str:
    """SIGTERM to honcho, which stops both servers (SIGKILL after 5 s); what of its process tree outlives it by
    ``timeout`` (a server's own child) gets SIGKILL."""
    proc = honcho(state)
    state.honcho_pid.unlink(missing_ok=True)
    if proc is None:
        return "honcho was not running"
    tree = [proc, *proc.children(recursive=True)]
    proc.terminate()
    deadline = time.monotonic() + timeout
    while (left := running(tree)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in left:
        log(f"pid {p.pid} outlived honcho: SIGKILL")
        p.kill()
    return f"stopped (honcho pid {proc.pid})"


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (the same processes: psutil compares start times); a zombie is gone."""
    try:
        return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:  # exited between the two calls
        return running(procs)


def wait_healthy(state: State, service: str, conf: dict) -> float:
    t0 = time.monotonic()
    while time.monotonic() < t0 + TIMEOUTS[service]:
        if healthy(service, conf):
            return time.monotonic() - t0
        if not honcho(state):
            raise TeamError(f"honcho exited while {service} was starting; {state.tail(service)}")
        time.sleep(0.25)
    raise TeamError(f"{service} not healthy after {TIMEOUTS[service]} s; {state.tail(service)}")


def ensure_bucket(conf: dict) -> None:
    import boto3

    env = client_env(conf)
    keys = {"aws_access_key_id": conf["access_key"], "aws_secret_access_key": conf["secret_key"]}
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=conf["region"], **keys)
    if conf["bucket"] not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=conf["bucket"])
        log(f"created bucket s3://{conf['bucket']}")


# ----------------------------------------------------------------------------- commands


def resolve_conf(state: State, args) -> dict:
    """team.json, the ports and bucket given on the command line (0: a free port), the defaults, a new password."""
    conf = state.load() or {}
    for key in ("postgres_port", "s3_port", "mlflow_port", "bucket"):
        if (given := getattr(args, key, None)) is not None:
            conf[key] = free_port() if given == 0 else given
    conf = {**DEFAULTS, "db_password": secrets.token_urlsafe(18), **conf}
    if "pg_data" not in conf:
        conf["pg_data"] = str(state.dir / "pgdata")
        if pw := pg_account():  # PostgreSQL runs as another user: its data dir must be in a folder it can enter
            state.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(state.dir, 0o755)
            if subprocess.run(["test", "-x", str(state.dir)], **as_pg()).returncode != 0:
                tag = hashlib.sha256(str(state.dir).encode()).hexdigest()[:10]
                conf["pg_data"] = str(Path(tempfile.gettempdir()) / f"dirl-team-pg-{tag}")
                log(f"{state.dir} is not reachable by user {pw.pw_name!r}: PostgreSQL data in {conf['pg_data']}")
    return conf


def cmd_up(state: State, conf: dict | None, args) -> int:
    conf = resolve_conf(state, args)
    state.save("team.json", json.dumps(conf, indent=2))
    t0, had_db = time.monotonic(), (Path(conf["pg_data"]) / "PG_VERSION").is_file()
    try:
        servers = honcho(state)
        if servers and not (healthy("s3", conf) and healthy("mlflow", conf)):
            log(f"s3, mlflow: honcho runs but a server does not answer; restarting them: {stop_servers(state)}")
            servers = None
        running = {"postgres": pg_pid(conf) is not None, "s3": bool(servers), "mlflow": bool(servers)}
        for service, port in ((s, conf[f"{s}_port"]) for s in SERVICES if not running[s]):
            if free_port(port) is None:
                raise TeamError(
                    f"{service}: {HOST}:{port} is taken by another program; pass --{service}-port N (0: any)"
                )
        if not running["postgres"]:
            start_postgres(state, conf)
        log(f"postgres: {'already running' if running['postgres'] else 'started'} (port {conf['postgres_port']})")
        if servers:
            log(f"s3, mlflow: already running (honcho pid {servers.pid})")
        else:
            if had_db:
                log("note: moto keeps its objects in memory: the runs in the database have lost their artifacts")
            start_servers(state, conf)
        for service in ("s3", "mlflow"):
            took = wait_healthy(state, service, conf)
            log(f"{service}: healthy in {took:.1f} s (port {conf[f'{service}_port']})")
            if service == "s3":
                ensure_bucket(conf)
    except BaseException:
        log(f"s3, mlflow: {stop_servers(state)}; postgres: {stop_postgres(conf)}")
        raise
    state.save("team.env", render_env(conf) + "\n")
    log(f"all up in {time.monotonic() - t0:.1f} s; the exports (also in {state.dir / 'team.env'}):")
    print(render_env(conf), flush=True)
    return 0


def cmd_down(state: State, conf: dict | None, args) -> int:
    if conf:
        log(f"s3, mlflow: {stop_servers(state)}")
        log(f"postgres: {stop_postgres(conf)}")
    if args.purge:
        if conf:
            shutil.rmtree(conf["pg_data"], ignore_errors=True)
        shutil.rmtree(state.dir, ignore_errors=True)
        log(f"removed {state.dir}")
    return 0


def cmd_status(state: State, conf: dict, args) -> int:
    proc, postmaster = honcho(state), pg_pid(conf)
    pids = {"postgres": postmaster, "honcho": proc.pid if proc else None}
    alive = {"postgres": postmaster is not None, "s3": bool(proc), "mlflow": bool(proc)}
    report = {s: {"port": conf[f"{s}_port"], "healthy": alive[s] and healthy(s, conf)} for s in SERVICES}
    ok = all(r["healthy"] for r in report.values())
    if args.json:
        out = {"state_dir": str(state.dir), "pg_data": conf["pg_data"], "healthy": ok, "pids": pids}
        print(json.dumps({**out, "services": report}, indent=2))
    else:
        for s, r in report.items():
            print(f"{s:9s} port {r['port']:>5}  {'healthy' if r['healthy'] else 'DOWN'}")
        print(f"pids: postgres {pids['postgres'] or '-'}, honcho (s3 + mlflow) {pids['honcho'] or '-'}")
        print(f"logs: {state.dir / 'logs'}")
    return 0 if ok else 1


def cmd_env(state: State, conf: dict, args) -> int:
    print(json.dumps(client_env(conf), indent=2) if args.json else render_env(conf))
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="pipeline/team.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog='Typical use:  eval "$(python pipeline/team.py up)"; dvc repro ...; python pipeline/team.py down\n'
        "or: make team-up / make team-down (then `source .team/team.env`)",
    )
    default_dir = os.environ.get("DIRL_TEAM_DIR", str(ROOT / ".team"))
    ap.add_argument("--state-dir", default=default_dir, help="default: $DIRL_TEAM_DIR or %(default)s")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the stack (what of it is down), wait until healthy, print the exports")
    for s in SERVICES:
        up.add_argument(f"--{s}-port", type=int, help=f"default {DEFAULTS[f'{s}_port']} (0 = any free port)")
    up.add_argument("--bucket", help=f"default {DEFAULTS['bucket']}")
    down = sub.add_parser("down", help="stop honcho (so the S3 server and mlflow), then PostgreSQL (pg_ctl stop)")
    down.add_argument("--purge", action="store_true", help="also delete the state dir: the database, logs, keys")
    status = sub.add_parser("status", help="port and health per service; exit 1 unless all are healthy")
    env = sub.add_parser("env", help='print the exports (`eval "$(python pipeline/team.py env)"`)')
    for p, func in ((up, cmd_up), (down, cmd_down), (status, cmd_status), (env, cmd_env)):
        p.set_defaults(func=func)
    for p in (status, env):
        p.add_argument("--json", action="store_true", help="a JSON object")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state = State(args.state_dir)
    try:
        if (conf := state.load()) is None and args.cmd in ("status", "env"):
            raise TeamError(f"no team stack in {state.dir}: run `up` first")
        return args.func(state, conf, args)
    except TeamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
