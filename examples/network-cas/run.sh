#!/usr/bin/env bash
# The quickstart's program, provisioned by a network CAS: a CAS on loopback TLS that starts
# closed (its administrator named at start), an owner who pins it, registers the node and
# creates the session, a node agent (LAS) holding the node's sim platform key, and a
# runtime that knows only the CAS address and SESSION/SERVICE. Sim mode.
# Run it after `make demo` (it uses .venv): bash examples/network-cas/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
veil="${VEIL:-$top/.venv/bin/veil}"
work="${VEIL_DEMO_DIR:-$top/.veil-demo-network}"
port="${VEIL_DEMO_PORT:-18443}"
python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$work"
mkdir -p "$work/app"
cp "$top/examples/quickstart/app.py" "$work/app/app.py"
export XDG_CONFIG_HOME="$work/owner"   # the owner's key and pins
export VEIL_HOME="$work/node"          # the node's LAS key
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; cat "$1" >&2; exit 1; }

step "1. start the CAS (HTTPS, TLS 1.3; closed: you are its administrator) and the node's LAS"
echo "owner id: $("$veil" owner id)"
"$veil" cas serve --listen "127.0.0.1:$port" --data "$work/cas" --admin "$("$veil" owner id)" \
  2> "$work/cas.log" & pids+=($!)
"$veil" las serve --socket "$work/las.sock" 2> "$work/las.log" & pids+=($!)
wait_for "$work/cas.log" "listening on"
wait_for "$work/las.log" "serving platform"
url="https://127.0.0.1:$port"

step "2. the owner verifies the CAS by its evidence and pins it"
"$veil" cas attest "$url" --tolerate sim

step "3. the administrator registers the node; the session accepts that node and no other"
platform="$("$veil" cas platform add "$url" --las "unix:$work/las.sock" --name demo-node)"
measurement="$("$veil" measure -- "$python" "$work/app/app.py")"
sed -e "s|@PYTHON@|$python|" -e "s|@APP@|$work/app/app.py|" -e "s|@MEASUREMENT@|$measurement|" \
  -e "s|^name: quickstart/demo|name: network/demo|" \
  -e "s|^  tolerate: \[sim\].*|&\n  sim_platforms: [$platform]   # the registered nodes whose sim evidence counts|" \
  "$top/examples/quickstart/session.yaml.in" > "$work/session.yaml"
"$veil" session create "$work/session.yaml"

step "4. the runtime: only the CAS address, its pinned CA, the LAS and SESSION/SERVICE"
"$veil" cas ca "$url" -o "$work/cas-ca.pem"
XDG_CONFIG_HOME="$work/runtime" VEIL_CAS_ADDR="$url" VEIL_CAS_CA="$work/cas-ca.pem" \
  VEIL_CONFIG_ID=network/demo/app VEIL_LAS_ADDR="unix:$work/las.sock" "$veil" run

step "5. the CAS's audit log, its head signed by the pinned CAS key"
"$veil" audit verify --network
echo
echo "demo: done."
