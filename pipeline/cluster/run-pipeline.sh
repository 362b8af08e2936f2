#!/usr/bin/env bash
# Run the DVC pipeline against the Ray cluster this node belongs to, from a workspace on shared storage.
#
#   pipeline/cluster/run-pipeline.sh [--workspace DIR] [--dry-run|--seed-only] [-- EXTRA DVC ARGS]
#   pipeline/cluster/run-pipeline.sh --workspace /mnt/efs/workspace/dirl -- -S cluster.use_gpu=true
#
# Used as the KubeRay RayJob entrypoint and through `ray exec` on a `ray up` cluster. It
#   1. seeds the workspace once from this checkout (code, params.yaml, dvc.yaml, dvc.lock, .git),
#      leaving out local outputs and the venv; an existing workspace is used as it is (update it
#      with git there, or delete it to re-seed). Ray Data read tasks open shard files by path on
#      whichever node runs them, so the workspace must be on storage every node mounts at one path;
#   2. runs `dvc exp run` there (`dvc repro` plus parameter overrides, recorded as an experiment) with
#        -S cluster.address=auto                      join the running cluster instead of starting Ray
#        -S cluster.storage_path=$DIRL_STORAGE_PATH    checkpoints on shared storage (path or URI)
#        -S mlflow.tracking_uri=$MLFLOW_TRACKING_URI the tracking server every node reaches
#      followed by EXTRA DVC ARGS (e.g. -S cluster.use_gpu=true -S cluster.num_workers=4).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
SRC=$(cd "$HERE/../.." && pwd -P)
WORKSPACE=${DIRL_WORKSPACE:-/shared/workspace/dirl}
DRY_RUN=0
SEED_ONLY=0
EXTRA=()

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "run-pipeline.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --workspace) [[ $# -ge 2 ]] || die "--workspace needs a folder"; WORKSPACE=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --seed-only) SEED_ONLY=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) die "unknown argument '$1' (extra dvc arguments go after --)" ;;
    esac
done

(( SEED_ONLY )) || [[ -n ${DIRL_STORAGE_PATH:-} ]] || die "DIRL_STORAGE_PATH is not set: the shared checkpoint folder (absolute path or s3:// URI) every node reaches"
(( SEED_ONLY )) || [[ $DIRL_STORAGE_PATH == /* || $DIRL_STORAGE_PATH == *://* ]] || die "DIRL_STORAGE_PATH must be an absolute path or a URI, got '$DIRL_STORAGE_PATH'"
(( SEED_ONLY )) || [[ -n ${MLFLOW_TRACKING_URI:-} ]] || die "MLFLOW_TRACKING_URI is not set: the MLflow server every node reaches, e.g. http://mlflow:5000"

CMD=(dvc exp run
    -S cluster.address=auto
    -S "cluster.storage_path=${DIRL_STORAGE_PATH:-}"
    -S "mlflow.tracking_uri=${MLFLOW_TRACKING_URI:-}"
    "${EXTRA[@]}")

if (( DRY_RUN )); then
    echo "workspace: $WORKSPACE"
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi

[[ -d $SRC/.git ]] || die "$SRC is not a git checkout: dvc exp run needs the repository history (.git)"
if [[ ! -e $WORKSPACE/.git ]]; then
    echo "run-pipeline.sh: seeding the workspace $WORKSPACE from $SRC" >&2
    mkdir -p "$WORKSPACE"
    tar -C "$SRC" --exclude=./data --exclude=./results --exclude=./models --exclude=./ray_results \
        --exclude=./mlruns --exclude=./mlartifacts --exclude=./mlflow.db --exclude=./.dvc/cache \
        --exclude=./.dvc/tmp --exclude=./.venv --exclude=./.pytest_cache --exclude=__pycache__ \
        --exclude="*.egg-info" -cf - . | tar -C "$WORKSPACE" -xf -
fi
(( SEED_ONLY )) && { echo "$WORKSPACE"; exit 0; }
# The stages import the installed package (this checkout); the workspace's copy is what DVC hashes.
src_head=$(git -C "$SRC" rev-parse HEAD 2>/dev/null || true)
ws_head=$(git -C "$WORKSPACE" rev-parse HEAD 2>/dev/null || true)
if [[ $src_head != "$ws_head" ]]; then
    echo "run-pipeline.sh: warning: the workspace is at commit ${ws_head:-?} but the installed code at ${src_head:-?};" \
         "bring it up to date with: git -C $WORKSPACE pull $SRC HEAD" >&2
fi
cd "$WORKSPACE"
export GIT_AUTHOR_NAME=${GIT_AUTHOR_NAME:-dirl-cluster} GIT_AUTHOR_EMAIL=${GIT_AUTHOR_EMAIL:-dirl-cluster@localhost}
export GIT_COMMITTER_NAME=${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME} GIT_COMMITTER_EMAIL=${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
echo "run-pipeline.sh: in $WORKSPACE: ${CMD[*]}" >&2
exec "${CMD[@]}"
