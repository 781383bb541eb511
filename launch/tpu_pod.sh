#!/usr/bin/env bash
# Run SIGMMA on every host of a Cloud TPU VM pod slice (e.g. v4-32, v5e-64).
#   launch/tpu_pod.sh TPU_NAME ZONE configs/luad.py /mnt/shared/workdir [extra flags...]
# Each host runs the same command; jax.distributed.initialize() finds the others from the TPU
# metadata. The workdir must be a filesystem path that every host mounts, e.g. a Filestore (NFS)
# share mounted at /mnt/shared on each host: gs:// URLs are refused (launch/README.md).
set -euo pipefail
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4; shift 4
REPO=${REPO:?set REPO to the git URL of your sigmma_jax clone}
case "$WORKDIR" in
  *://*) echo "error: $WORKDIR: the workdir must be a mounted path, not a URL (launch/README.md)" >&2
         exit 1 ;;
esac
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d sigmma_jax ] || git clone $REPO sigmma_jax
  cd sigmma_jax && git pull -q
  python3 -m pip install -q -e . 'jax[tpu]'
  test -d $(dirname "$WORKDIR") || { echo \"error: $(dirname "$WORKDIR") is not mounted on \$(hostname)\" >&2; exit 1; }
  python3 -m sigmma_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR $*
"
