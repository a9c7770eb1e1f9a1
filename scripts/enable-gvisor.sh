#!/usr/bin/env bash
# Registers gVisor's `runsc` with the Docker engine so policies can choose `runtime = "runsc"`.
# Idempotent. Needs root. `--network=none` is required: runsc refuses to start in the host's
# network namespace otherwise ("cannot run with network enabled in root network namespace"),
# and Airlock's containers never have a network anyway.
set -euo pipefail
runsc_path=$(command -v runsc || true)
if [ -z "$runsc_path" ]; then
  echo "runsc is not installed: apt-get install runsc" >&2
  exit 1
fi
conf=/etc/docker/daemon.json
mkdir -p /etc/docker
[ -s "$conf" ] || echo '{}' > "$conf"
python3 - "$conf" "$runsc_path" <<'PY'
import json, sys
path, runsc = sys.argv[1], sys.argv[2]
with open(path) as f:
    conf = json.load(f)
want = {"path": runsc, "runtimeArgs": ["--network=none"]}
if conf.get("runtimes", {}).get("runsc") != want:
    conf.setdefault("runtimes", {})["runsc"] = want
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
    import os
    os.replace(path + ".tmp", path)
    print("registered runsc in", path)
PY
# dockerd re-reads its runtimes on SIGHUP; no restart, running containers are untouched.
if pid=$(pidof dockerd); then
  kill -HUP $pid
  for _ in $(seq 1 50); do
    docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc && exit 0
    sleep 0.2
  done
  echo "dockerd did not pick up the runsc runtime; see its log" >&2
  exit 1
else
  echo "dockerd is not running here; runsc takes effect when it starts" >&2
fi
