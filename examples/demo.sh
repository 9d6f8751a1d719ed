#!/usr/bin/env bash
# The README's main job: two throwaway servers on this machine, then `shipyard setup` and a
# zero-downtime `shipyard deploy` of examples/app while a load loop counts failures.
# Run it with `make demo` (which installs the packages and the venv first). KEEP_LAB=1
# leaves the servers running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=$repo/.venv/bin/python
shipyard=$repo/.venv/bin/shipyard
work=$(mktemp -d)
cleanup() {
  [[ -n ${load_pid:-} ]] && kill "$load_pid" 2>/dev/null || true
  [[ ${KEEP_LAB:-0} == 1 ]] || "$python" "$repo/tests/lab/lab.py" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== two throwaway servers: network namespaces with their own sshd and dockerd"
"$python" tests/lab/lab.py up --hosts 2
export DEMO_HOST_1=10.210.0.11 DEMO_HOST_2=10.210.0.12 DEMO_SSH_KEY=$repo/.lab/keys/id_ed25519
export SHIPYARD_SSH_KNOWN_HOSTS=$repo/.lab/known_hosts

echo "== the proxy image (shipyard-proxy, kamal-proxy compatible) into the local registry"
"$python" scripts/build-proxy-image --base pybase:local --tag localhost:5555/shipyard-proxy:demo --push

echo "== the example app, as a git repository"
cp -r examples/app/. "$work/"
mkdir -p "$work/config" && cp examples/config/deploy.yml "$work/config/"
cd "$work"
git init -q && git add -A && git -c user.email=demo@example.com -c user.name=Demo commit -qm "v1"

echo "== shipyard setup"
"$shipyard" setup --version v1
echo
for host in $DEMO_HOST_1 $DEMO_HOST_2; do echo "http://$host/ says: $(curl -fsS "http://$host/")"; done

echo
echo "== a new version, deployed under load"
sed -i 's/hello from/hi again from/' app.py
git -c user.email=demo@example.com -c user.name=Demo commit -qam "v2"
"$python" "$repo/examples/load.py" "http://$DEMO_HOST_1/" "http://$DEMO_HOST_2/" &
load_pid=$!
"$shipyard" deploy --version v2
kill -TERM "$load_pid"
wait "$load_pid"
load_pid=
echo
for host in $DEMO_HOST_1 $DEMO_HOST_2; do echo "http://$host/ says: $(curl -fsS "http://$host/")"; done
echo
"$shipyard" audit
