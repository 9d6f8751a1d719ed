#!/usr/bin/env bash
# The README's main job, for now: scaffold a project and show its merged config, then
# run a command on throwaway servers over SSH. (The full deploy demo replaces this when
# `shipyard deploy` lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
shipyard=$repo/.venv/bin/shipyard
work=$(mktemp -d)
trap '"$repo/.venv/bin/python" "$repo/tests/lab/lab.py" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

echo "== shipyard init && shipyard config, in $work"
cd "$work"
"$shipyard" init
APP_SECRET_KEY=demo-secret-value "$shipyard" config

echo
echo "== two throwaway servers (network namespaces with their own sshd and dockerd)"
"$repo/.venv/bin/python" "$repo/tests/lab/lab.py" up --hosts 2
cat > config/deploy.yml <<YAML
service: demo
image: demo
servers: [10.210.0.11, 10.210.0.12]
registry: {server: "localhost:5555"}
ssh: {keys: ["$repo/.lab/keys/id_ed25519"], keys_only: true, config: false}
YAML
export SHIPYARD_SSH_KNOWN_HOSTS=$repo/.lab/known_hosts VERSION=demo
"$shipyard" server exec 'echo "$(hostname): $(docker version --format {{.Server.Version}})"'
"$shipyard" lock acquire -m "demo"
"$shipyard" lock status
"$shipyard" lock release
"$shipyard" audit
