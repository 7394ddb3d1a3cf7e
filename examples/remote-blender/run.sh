#!/usr/bin/env bash
# Render an encrypted scene with an encrypted script on an "untrusted host": every part on
# this machine (a CAS in sim mode, the host's LAS, Debian's sshd on loopback with its own
# host key, and you, the submitter). Needs root, openssh-server and blender (`make test`
# installs them). Run it after `make demo`: bash examples/remote-blender/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
veil="${VEIL:-$top/.venv/bin/veil}"
work="${VEIL_DEMO_DIR:-$top/.veil-demo-remote}"
port="${VEIL_DEMO_PORT:-18444}"
ssh_port="${VEIL_DEMO_SSH_PORT:-18022}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (the host mounts volumes; sshd)"; exit 1; }
command -v blender >/dev/null && [ -x /usr/sbin/sshd ] || { echo "needs blender and openssh-server"; exit 1; }

rm -rf "$work"
mkdir -p "$work/sshd" "$work/host"
export XDG_CONFIG_HOME="$work/you"   # your owner key and pins
export VEIL_HOME="$work/you-data"    # your job records and keys
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; cat "$1" >&2; exit 1; }

step "1. a CAS (you administer it) and the host's node agent (LAS)"
"$veil" cas serve --listen "127.0.0.1:$port" --data "$work/cas" --admin "$("$veil" owner id)" \
  2> "$work/cas.log" & pids+=($!)
VEIL_HOME="$work/node" "$veil" las serve --socket "$work/las.sock" 2> "$work/las.log" & pids+=($!)
wait_for "$work/cas.log" "listening on"
wait_for "$work/las.log" "serving platform"
url="https://127.0.0.1:$port"
"$veil" cas attest "$url" --tolerate sim
"$veil" cas platform add "$url" --las "unix:$work/las.sock" --name render-host >/dev/null

step "2. the host: an SSH server with its own host key; you record that key"
ssh-keygen -q -t ed25519 -N "" -f "$work/sshd/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$work/sshd/client_key"
cp "$work/sshd/client_key.pub" "$work/sshd/authorized_keys"
mkdir -p /run/sshd
cat > "$work/sshd/sshd_config" <<CONF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/sshd/host_key
PidFile $work/sshd/sshd.pid
AuthorizedKeysFile $work/sshd/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
CONF
/usr/sbin/sshd -D -e -f "$work/sshd/sshd_config" 2> "$work/sshd.log" & pids+=($!)
sleep 0.5
echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$work/sshd/host_key.pub")" > "$work/sshd/known_hosts"

step "3. you: send the scene and the script encrypted, render remotely, get the PNG back"
code="$work/code"
mkdir -p "$code"
cp "$here/scene.blend" "$here/render.py" "$code/"
"$veil" remote run --host "ssh://root@127.0.0.1:$ssh_port" --cas "$url" \
  --known-hosts "$work/sshd/known_hosts" --identity "$work/sshd/client_key" \
  --tolerate sim --las "unix:$work/las.sock" --remote-dir "$work/host/jobs" --remote-veil "$veil" \
  --code "$code" --output "$work/out" --name render \
  -- /usr/bin/blender -b {code}/scene.blend --python {code}/render.py -o {output}/frame_ -F PNG -f 1 \
  > "$work/blender.log"
ls -l "$work/out"
echo "left on the host: $(find "$work/host" -type f | wc -l) files"

echo
echo "demo: done. The render is $work/out/frame_0001.png"
