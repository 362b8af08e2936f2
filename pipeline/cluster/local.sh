#!/usr/bin/env bash
# A real multi-node Ray cluster on one machine: one head plus N worker nodes, each its own raylet,
# sharing one storage folder. It exercises the multi-node code paths (STRICT_SPREAD placement,
# shared checkpoint storage, node failures) without a cloud account.
#
#   pipeline/cluster/local.sh start --workers 2 --cpus-per-node 1
#   source "$(pipeline/cluster/local.sh env)"       # RAY_ADDRESS, DIRL_STORAGE_PATH, auth settings
#   python pipeline/cluster/smoke.py                 # or: dvc exp run -S cluster.address=auto ...
#   pipeline/cluster/local.sh stop
#
# Every node runs as `ray start --block` in its own process group; the state folder records their
# pids, so `stop` ends exactly the nodes of this cluster and leaves any other Ray on the machine
# alone (`ray stop` would kill every Ray process of the user). Linux only (setsid, /proc).
set -euo pipefail

PROG=$(basename "$0")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)

usage() {
    cat <<EOF
usage: $PROG [--state-dir DIR] COMMAND [OPTIONS]

A multi-node Ray cluster on this machine (one head + N worker raylets).

commands:
  start     start the head and the worker nodes, write <state dir>/cluster.env
  status    show the recorded nodes and the nodes Ray reports alive
            (exit 0: all alive, 1: some node down, 3: no cluster recorded)
  env       print the path of cluster.env, for: source "\$($PROG env)"
  stop      stop every node of this cluster (only those), remove its Ray temp folder

options (any command):
  --state-dir DIR       where pids, logs, the token and cluster.env live
                        (default: \$DIRL_CLUSTER_DIR or /tmp/dirl-cluster-\$(id -u))
start options:
  --workers N           worker nodes besides the head (default: 2)
  --cpus-per-node C     logical CPUs each worker node declares (default: 1)
  --head-cpus C         logical CPUs of the head node (default: --cpus-per-node)
  --storage DIR         shared storage folder for checkpoints (default: <state dir>/storage);
                        exported to jobs as DIRL_STORAGE_PATH
  --port P              head (GCS) port (default: a free port)
  --object-store-mb M   object store per node in MiB (default: 256)
  --auth MODE           token (default): a per-cluster token in <state dir>/auth_token;
                        disabled: no authentication (anyone who reaches the ports can run code)
  --timeout S           seconds to wait for each node (default: 180)
stop options:
  --timeout S           seconds to wait for each node to exit before SIGKILL (default: 60)

Ray CPU counts are logical: declaring more CPUs than the machine has is allowed.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
log() { echo "$PROG: $*" >&2; }

# ----------------------------------------------------------------------------- arguments

STATE=${DIRL_CLUSTER_DIR:-/tmp/dirl-cluster-$(id -u)}
CMD=""
WORKERS=2
CPUS=1
HEAD_CPUS=""
STORAGE=""
PORT=""
OBJ_MB=256
AUTH=token
TIMEOUT=""

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --state-dir) need_value "$@"; STATE=$2; shift 2 ;;
        --workers) need_value "$@"; WORKERS=$2; shift 2 ;;
        --cpus-per-node) need_value "$@"; CPUS=$2; shift 2 ;;
        --head-cpus) need_value "$@"; HEAD_CPUS=$2; shift 2 ;;
        --storage) need_value "$@"; STORAGE=$2; shift 2 ;;
        --port) need_value "$@"; PORT=$2; shift 2 ;;
        --object-store-mb) need_value "$@"; OBJ_MB=$2; shift 2 ;;
        --auth) need_value "$@"; AUTH=$2; shift 2 ;;
        --timeout) need_value "$@"; TIMEOUT=$2; shift 2 ;;
        start|status|env|stop)
            [[ -z $CMD ]] || die "two commands given ($CMD, $1)"
            CMD=$1; shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $CMD ]] || { usage >&2; exit 2; }

STATE=$(realpath -m -- "$STATE")
ENV_FILE=$STATE/cluster.env
NODES_FILE=$STATE/nodes          # lines: <name> <pid> <log file>
INFO_FILE=$STATE/cluster.info    # lines: key=value (temp_dir, address, ...)
TOKEN_FILE=$STATE/auth_token
LOG_DIR=$STATE/logs

# The Ray temp folder holds Unix sockets, whose paths must stay under ~107 bytes: keep it short.
TEMP_DIR=/tmp/dirl-ray-$(printf %s "$STATE" | cksum | cut -d' ' -f1)

# Python and ray from the project venv when present, else from PATH.
PY=${DIRL_PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PY=$REPO/.venv/bin/python; else PY=$(command -v python3 || true); fi
fi
[[ -n $PY && -x $PY ]] || die "no python found: create the venv (make install) or set DIRL_PYTHON"
RAY=$(dirname "$PY")/ray
[[ -x $RAY ]] || RAY=$(command -v ray || true)
[[ -n $RAY ]] || die "the 'ray' command is missing next to $PY and on PATH: pip install 'ray[default]'"

# ----------------------------------------------------------------------------- helpers

info_get() { [[ -f $INFO_FILE ]] && sed -n "s/^$1=//p" "$INFO_FILE" | tail -1; }

alive() {  # pid $1 exists and is not a zombie waiting to be reaped
    local st
    st=$(sed -n 's/.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

group_pids() {  # live (not zombie) pids whose process group is $1
    ps -eo pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ { print $1 }'
}

is_our_node() {  # pid $1 is a `ray start --block` leading its own group, with this cluster's temp dir
    local pid=$1 cmdline pgid
    [[ -r /proc/$pid/cmdline ]] || return 1
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline")
    pgid=$(ps -o pgid= -p "$pid" | tr -d ' ')
    [[ $pgid == "$pid" && $cmdline == *" start "* && $cmdline == *"$TEMP_DIR"* ]]
}

free_ports() {  # print $1 distinct free TCP ports
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

write_atomic() {  # write stdin to $1 via a temp file + rename
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat > "$tmp"
    mv -f "$tmp" "$1"
}

node_summary() {  # connect to $1, wait up to $3 s for $2 alive nodes, print one line per node
    "$PY" - "$1" "$2" "$3" <<'EOF'
import sys, time
import ray
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + timeout
while True:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.5)
for n in sorted(nodes, key=lambda n: not n["Resources"].get("node:__internal_head__")):
    role = "head" if n["Resources"].get("node:__internal_head__") else "worker"
    print(f"  {role:6s} {n['NodeID'][:12]}  CPU={n['Resources'].get('CPU', 0):g}  "
          f"raylet port {n['NodeManagerPort']}")
print(f"  {len(nodes)} node(s) alive")
ray.shutdown()
sys.exit(0 if len(nodes) >= want else 1)
EOF
}

wait_started() {  # wait until node log $3 says the runtime started; fail if pid $2 exits
    local name=$1 pid=$2 logf=$3 deadline=$((SECONDS + $4))
    while ! grep -q "Ray runtime started" "$logf" 2>/dev/null; do
        if ! alive "$pid"; then
            log "node $name exited during start-up; last lines of $logf:"
            tail -n 25 "$logf" >&2 || true
            return 1
        fi
        if (( SECONDS > deadline )); then
            log "node $name did not start within $4 s; last lines of $logf:"
            tail -n 25 "$logf" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

stop_group() {  # stop the nodes whose leader pids follow $1 (seconds to wait before SIGKILL)
    local timeout=$1 pid deadline members
    shift
    local stopping=()
    for pid in "$@"; do
        if alive "$pid" && is_our_node "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            stopping+=("$pid")
        elif alive "$pid"; then
            log "pid $pid is no longer a node of this cluster (pid reused): leaving it alone"
        else
            # The leader died earlier (crash, SIGKILL): its raylet and agents may linger in its
            # process group. Kill that group only if one member names this cluster's temp dir.
            members=$(group_pids "$pid")
            # shellcheck disable=SC2086
            if [[ -n $members && -n $(pids_using_temp_dir $members) ]]; then
                log "killing orphaned processes of node group $pid: $(echo $members)"
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
        fi
    done
    deadline=$((SECONDS + timeout))
    for pid in "${stopping[@]}"; do
        while alive "$pid" && (( SECONDS < deadline )); do sleep 0.2; done
        if alive "$pid"; then
            log "node pid $pid ignored SIGTERM for ${timeout}s: SIGKILL to its process group"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done
    # A node's children (raylet, agents, Ray workers) share its process group: give them a moment
    # to follow their parent, then kill whatever is left of that group (and nothing else).
    for pid in "${stopping[@]}"; do
        deadline=$((SECONDS + 10))
        while [[ -n $(group_pids "$pid") ]] && (( SECONDS < deadline )); do sleep 0.2; done
        members=$(group_pids "$pid")
        if [[ -n $members ]]; then
            log "killing leftover processes of node group $pid: $(echo $members)"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
    done
}

stop_nodes() {  # stop every recorded node: the workers first, then the head
    local timeout=$1 name pid logf heads=() workers=()
    [[ -f $NODES_FILE ]] || return 0
    while read -r name pid logf; do
        if [[ $name == head ]]; then heads+=("$pid"); else workers+=("$pid"); fi
    done < "$NODES_FILE"
    stop_group "$timeout" "${workers[@]}"
    stop_group "$timeout" "${heads[@]}"
}

pids_using_temp_dir() {  # pids (among $@, default all) whose command line or open files name TEMP_DIR
    local dirs=() p
    if [[ $# -eq 0 ]]; then dirs=(/proc/[0-9]*); else for p in "$@"; do dirs+=("/proc/$p"); done; fi
    {
        ps -eo pid=,args= | awk -v t="$TEMP_DIR" 'index($0, t) && !/awk -v t=/ { print $1 }'
        { find "${dirs[@]/%//fd}" -maxdepth 1 -lname "$TEMP_DIR/*" 2>/dev/null || true; } | cut -d/ -f3
    } | sort -u | { if [[ $# -eq 0 ]]; then cat; else grep -xF -f <(printf '%s\n' "$@") || true; fi; }
}

cluster_running() {
    local name pid logf
    [[ -f $NODES_FILE ]] || return 1
    read -r name pid logf < "$NODES_FILE"
    alive "$pid" && is_our_node "$pid"
}

# ----------------------------------------------------------------------------- commands

abort_start() {
    log "start failed: stopping the nodes started so far (logs kept in $LOG_DIR)"
    stop_nodes 10
    rm -rf "$TEMP_DIR"
    rm -f "$NODES_FILE" "$INFO_FILE" "$TOKEN_FILE"
    exit 1
}

cmd_start() {
    is_int "$WORKERS" || die "--workers must be a whole number >= 0, got '$WORKERS'"
    is_int "$CPUS" && (( CPUS >= 1 )) || die "--cpus-per-node must be a whole number >= 1, got '$CPUS'"
    HEAD_CPUS=${HEAD_CPUS:-$CPUS}
    is_int "$HEAD_CPUS" || die "--head-cpus must be a whole number >= 0, got '$HEAD_CPUS'"
    is_int "$OBJ_MB" && (( OBJ_MB >= 80 )) || die "--object-store-mb must be a whole number >= 80 (Ray's minimum is ~75 MiB), got '$OBJ_MB'"
    [[ -z $PORT ]] || { is_int "$PORT" && (( PORT >= 1024 && PORT <= 65535 )); } || die "--port must be 1024..65535, got '$PORT'"
    [[ $AUTH == token || $AUTH == disabled ]] || die "--auth must be 'token' or 'disabled', got '$AUTH'"
    TIMEOUT=${TIMEOUT:-180}
    is_int "$TIMEOUT" || die "--timeout must be whole seconds, got '$TIMEOUT'"

    if cluster_running; then
        die "a cluster is already running from $STATE ($(info_get address)); run '$PROG --state-dir $STATE stop' first"
    fi
    mkdir -p "$STATE" || die "cannot create the state folder $STATE"
    stop_nodes 10   # a crashed earlier run may have left process groups behind
    rm -rf "$TEMP_DIR"
    rm -f "$NODES_FILE" "$INFO_FILE" "$ENV_FILE"
    mkdir -p "$LOG_DIR"
    STORAGE=${STORAGE:-$STATE/storage}
    mkdir -p "$STORAGE" || die "cannot create storage folder $STORAGE"
    STORAGE=$(cd "$STORAGE" && pwd -P)

    # Token auth: `ray start` in Ray 2.60 turns it on only when RAY_AUTH_MODE is unset AND
    # ~/.ray/auth_token exists (any earlier local ray.init() writes one), so leaving it to Ray
    # makes the cluster's mode depend on the machine's history. Choose explicitly, and keep the
    # token per cluster so that clusters of different users/tests do not share a secret.
    unset RAY_ADDRESS RAY_AUTH_TOKEN
    export RAY_AUTH_MODE=$AUTH
    if [[ $AUTH == token ]]; then
        (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(32))' > "$TOKEN_FILE")
        export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE
    else
        unset RAY_AUTH_TOKEN_PATH
        rm -f "$TOKEN_FILE"
    fi
    export RAY_USAGE_STATS_ENABLED=0
    # SIGTERM on a `ray start --block` node drains it first (30 s by default): not useful here.
    export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
    # A raylet must register with the GCS within 30 s by default; a busy 2-core machine can take longer.
    export RAY_raylet_start_wait_time_s=${RAY_raylet_start_wait_time_s:-$TIMEOUT}

    # Ports with fixed defaults would collide between nodes (dashboard agent 52365) or with
    # another Ray on the machine (GCS 6379, dashboard 8265, client 10001): pick free ones.
    # The other ports (node/object manager, workers, metrics) default to random already.
    local ports
    read -r -a ports <<< "$(free_ports $((WORKERS + 4)))"
    local gcs_port=${PORT:-${ports[0]}} dash_port=${ports[1]} client_port=${ports[2]}
    local obj_bytes=$((OBJ_MB * 1024 * 1024))
    local t0=$SECONDS
    {
        echo "temp_dir=$TEMP_DIR"
        echo "storage=$STORAGE"
        echo "auth=$AUTH"
    } | write_atomic "$INFO_FILE"

    local head_log=$LOG_DIR/head.log
    setsid "$RAY" start --head --block --port "$gcs_port" --num-cpus "$HEAD_CPUS" --num-gpus 0 \
        --temp-dir "$TEMP_DIR" --dashboard-port "$dash_port" --ray-client-server-port "$client_port" \
        --dashboard-agent-listen-port "${ports[3]}" --object-store-memory "$obj_bytes" \
        --disable-usage-stats --log-style record --log-color false \
        > "$head_log" 2>&1 < /dev/null &
    local head_pid=$!
    echo "head $head_pid $head_log" >> "$NODES_FILE"
    log "head node: pid $head_pid, GCS port $gcs_port, log $head_log"
    wait_started head "$head_pid" "$head_log" "$TIMEOUT" || abort_start

    # Ray replaces a loopback --node-ip-address by the machine's routable address, so workers
    # and drivers must use the address the head reports.
    local ip
    ip=$(sed -n 's/.*Local node IP: *\([0-9a-fA-F.:]*\).*/\1/p' "$head_log" | head -1)
    [[ -n $ip ]] || { log "cannot read the node IP from $head_log"; abort_start; }
    local address=$ip:$gcs_port

    # One worker at a time: nodes of one cluster share the session folder, and raylets started
    # together race for the same socket names there (the loser never registers).
    local i pid wlog
    for ((i = 1; i <= WORKERS; i++)); do
        wlog=$LOG_DIR/worker-$i.log
        setsid "$RAY" start --address "$address" --block --num-cpus "$CPUS" --num-gpus 0 \
            --temp-dir "$TEMP_DIR" --dashboard-agent-listen-port "${ports[$((i + 3))]}" \
            --object-store-memory "$obj_bytes" --include-log-monitor false \
            --disable-usage-stats --log-style record --log-color false \
            > "$wlog" 2>&1 < /dev/null &
        pid=$!
        echo "worker-$i $pid $wlog" >> "$NODES_FILE"
        log "worker node $i: pid $pid, log $wlog"
        wait_started "worker-$i" "$pid" "$wlog" "$TIMEOUT" || abort_start
    done

    node_summary "$address" $((WORKERS + 1)) "$TIMEOUT" > "$LOG_DIR/nodes.txt" 2> "$LOG_DIR/nodes.err" \
        || { log "only part of the cluster registered with the head:"; cat "$LOG_DIR/nodes.txt" "$LOG_DIR/nodes.err" >&2; abort_start; }

    {
        echo "# Ray cluster started by pipeline/cluster/local.sh; source this file to use it."
        echo "export RAY_ADDRESS=$address"
        echo "export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dash_port"
        echo "export DIRL_STORAGE_PATH=$STORAGE"
        echo "export RAY_AUTH_MODE=$AUTH"
        if [[ $AUTH == token ]]; then echo "export RAY_AUTH_TOKEN_PATH=$TOKEN_FILE"; fi
        echo "export RAY_USAGE_STATS_ENABLED=0"
    } | write_atomic "$ENV_FILE"
    echo "address=$address" >> "$INFO_FILE"
    echo "dashboard=http://127.0.0.1:$dash_port" >> "$INFO_FILE"

    cat "$LOG_DIR/nodes.txt"
    echo "cluster up in $((SECONDS - t0)) s: $((WORKERS + 1)) nodes"
    echo "RAY_ADDRESS=$address"
    echo "DIRL_STORAGE_PATH=$STORAGE"
    echo "dashboard: http://127.0.0.1:$dash_port"
    echo "use it:    source $ENV_FILE"
}

cmd_status() {
    if [[ ! -f $NODES_FILE ]]; then
        echo "no cluster recorded in $STATE"
        return 3
    fi
    local name pid logf down=0
    echo "state dir: $STATE"
    echo "address:   $(info_get address)"
    echo "storage:   $(info_get storage)"
    echo "dashboard: $(info_get dashboard)"
    while read -r name pid logf; do
        if alive "$pid" && is_our_node "$pid"; then
            echo "  $name pid $pid running"
        else
            echo "  $name pid $pid DOWN (log: $logf)"
            down=1
        fi
    done < "$NODES_FILE"
    if cluster_running && [[ -f $ENV_FILE ]]; then
        # shellcheck disable=SC1090
        (source "$ENV_FILE" && node_summary "$RAY_ADDRESS" 0 0 2>/dev/null) || down=1
    fi
    return $down
}

cmd_env() {
    [[ -f $ENV_FILE ]] || { echo "$PROG: no running cluster in $STATE (run '$PROG start')" >&2; return 3; }
    echo "$ENV_FILE"
}

cmd_stop() {
    TIMEOUT=${TIMEOUT:-60}
    is_int "$TIMEOUT" || die "--timeout must be whole seconds, got '$TIMEOUT'"
    if [[ ! -f $NODES_FILE ]]; then
        echo "no cluster recorded in $STATE"
        rm -rf "$TEMP_DIR"
        return 0
    fi
    local t0=$SECONDS n
    n=$(wc -l < "$NODES_FILE")
    stop_nodes "$TIMEOUT"
    local left deadline=$((SECONDS + 10))
    left=$(pids_using_temp_dir)
    while [[ -n $left ]] && (( SECONDS < deadline )); do sleep 0.5; left=$(pids_using_temp_dir); done
    if [[ -n $left ]]; then
        log "processes still using $TEMP_DIR: $(echo $left)"
        return 1
    fi
    rm -rf "$TEMP_DIR"
    rm -f "$NODES_FILE" "$ENV_FILE" "$TOKEN_FILE"
    echo "stopped $n node(s) in $((SECONDS - t0)) s (storage kept: $(info_get storage); logs: $LOG_DIR)"
    rm -f "$INFO_FILE"
}

case $CMD in
    start) cmd_start ;;
    status) cmd_status ;;
    env) cmd_env ;;
    stop) cmd_stop ;;
esac
