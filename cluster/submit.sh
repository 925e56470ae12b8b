#!/usr/bin/env bash
# cluster/submit.sh [ray job submit options] -- COMMAND...
#   RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh -- python -m adactrl.cli train --ray_address auto
#
# `ray job submit` of this working tree with cluster/runtime_env.yaml, to the cluster whose
# dashboard is at RAY_ADDRESS (http://host:8265). Options before `--` go to `ray job submit`
# (e.g. --no-wait, --submission-id); everything after it is the job's command.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -z "${RAY_ADDRESS:-}" ]]; then
  echo "submit.sh: set RAY_ADDRESS to the cluster's dashboard address, e.g. RAY_ADDRESS=http://127.0.0.1:8265" >&2
  exit 2
fi
if [[ "$RAY_ADDRESS" != http://* && "$RAY_ADDRESS" != https://* ]]; then
  echo "submit.sh: RAY_ADDRESS=$RAY_ADDRESS is not a dashboard address; jobs go to http://HEAD:8265, not the GCS port" >&2
  exit 2
fi
if [[ " $* " != *" -- "* ]]; then
  echo "submit.sh: no job command; usage: cluster/submit.sh [ray job submit options] -- COMMAND..." >&2
  exit 2
fi
# An unreachable address fails here in seconds, not after `ray job submit`'s retries.
if ! python3 - "$RAY_ADDRESS" <<'PY'
import socket, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
try:
    socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
except OSError as err:
    sys.exit(f"submit.sh: cannot reach the Ray dashboard at {sys.argv[1]} ({err}); is the cluster up "
             "(`ray dashboard cluster/cluster.yaml` forwards it to 127.0.0.1:8265)?")
PY
then
  exit 2
fi

cd "$root"
exec ray job submit --address "$RAY_ADDRESS" --working-dir . --runtime-env cluster/runtime_env.yaml "$@"
