#!/usr/bin/env bash
# Confidential multi-party computation: a data owner shares an encrypted volume with an
# analyst's session only, pinned to the version of that session the owner reviewed. The
# analyst's unmodified program computes on the data; the analyst cannot read it outside
# that program; changing the analyst's session breaks the pin. Network CAS, sim mode.
# Needs root (FUSE). Run it after `make demo` (it uses .venv): bash examples/multi-party/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
veil="${VEIL:-$top/.venv/bin/veil}"
work="${VEIL_DEMO_DIR:-$top/.veil-demo-multi-party}"
port="${VEIL_DEMO_PORT:-18444}"
python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$work"
mkdir -p "$work/owner" "$work/lab" "$work/data"
cp "$here/ingest.py" "$work/owner/"
cp "$here/analyze.py" "$here/leak.py" "$work/lab/"
python3 - "$work/owner/records.csv" <<'PY'
import random, sys
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    f.write("patient,age,diagnosis\n")
    for i in range(1000):
        f.write(f"patient-{i:04d},{rng.randint(18, 90)},{rng.choice(['flu', 'asthma', 'diabetes'])}\n")
PY
export VEIL_HOME="$work/node"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_for() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; cat "$1" >&2; exit 1; }
as_operator() { XDG_CONFIG_HOME="$work/operator-config" "$veil" "$@"; }  # runs the CAS
as_owner() { XDG_CONFIG_HOME="$work/owner-config" "$veil" "$@"; }
as_analyst() { XDG_CONFIG_HOME="$work/lab-config" "$veil" "$@"; }
runtime() {  # a runtime on the node: only the CAS address, its pinned CA, the LAS and SESSION/SERVICE
  XDG_CONFIG_HOME="$work/runtime" VEIL_CAS_ADDR="$url" VEIL_CAS_CA="$work/cas-ca.pem" \
    VEIL_LAS_ADDR="unix:$work/las.sock" VEIL_CONFIG_ID="$1" "$veil" run
}
fill() {  # fill in a session template
  sed -e "s|@PYTHON@|$python|g" -e "s|@WORK@|$work|g" -e "s|@PLATFORM@|$platform|g" \
    -e "s|@OWNER_ID@|$(as_owner owner id)|g" "$@"
}

step "1. an operator runs a CAS (closed: the operator administers it) and the node's LAS"
"$veil" cas serve --listen "127.0.0.1:$port" --data "$work/cas" --admin "$(as_operator owner id)" \
  2> "$work/cas.log" & pids+=($!)
"$veil" las serve --socket "$work/las.sock" 2> "$work/las.log" & pids+=($!)
wait_for "$work/cas.log" "listening on"
wait_for "$work/las.log" "serving platform"
url="https://127.0.0.1:$port"
as_operator cas attest "$url" --tolerate sim
platform="$(as_operator cas platform add "$url" --las "unix:$work/las.sock" --name node-1)"
echo "the operator admits the data owner and the analyst (their owner ids), who each pin the CAS"
as_operator cas owner add "$(as_owner owner id)"
as_operator cas owner add "$(as_analyst owner id)"
as_owner cas attest "$url" --tolerate sim
as_analyst cas attest "$url" --tolerate sim
as_owner cas ca "$url" -o "$work/cas-ca.pem"

step "2. the analyst writes a session that imports the owner's volume (pinned to the owner's id), and creates it"
fill -e "s|@PROGRAM@|analyze.py|" \
  -e "s|@MEASUREMENT@|$("$veil" measure -- "$python" "$work/lab/analyze.py" "$work/data/records.csv")|" \
  "$here/analyst.yaml.in" > "$work/lab/analysis.yaml"
as_analyst session create "$work/lab/analysis.yaml"
analyst_hash="$(as_analyst session hash "$work/lab/analysis.yaml")"
echo "the analyst sends the owner the session and its hash: $analyst_hash"

step "3. the data owner reviews it, exports the volume to exactly that hash, and ingests the data"
fill -e "s|@ANALYST_HASH@|$analyst_hash|" \
  -e "s|@INGEST_MEASUREMENT@|$("$veil" measure -- "$python" "$work/owner/ingest.py" "$work/owner/records.csv" "$work/data")|" \
  "$here/owner.yaml.in" > "$work/owner/records.yaml"
as_owner session create "$work/owner/records.yaml"
runtime hospital/records/ingest
if grep -rq "patient-" "$work/data"; then echo "plaintext on disk!" >&2; exit 1; fi
echo "on disk: $(find "$work/data" -type f | wc -l) files, no plaintext record (grep -r patient- finds nothing)"

step "4. the analyst's unmodified program computes on the data"
runtime lab/analysis/job

step "5. outside the attested program, the analyst cannot read the data"
if as_analyst session show hospital/records 2> "$work/denied.txt"; then exit 1; fi
echo "veil session show hospital/records: $(cat "$work/denied.txt")"
echo "the volume key never leaves the CAS; the files are ciphertext"

step "6. the analyst changes the program; the pin no longer matches and the CAS refuses"
fill -e "s|@PROGRAM@|leak.py|" \
  -e "s|@MEASUREMENT@|$("$veil" measure -- "$python" "$work/lab/leak.py" "$work/data/records.csv")|" \
  "$here/analyst.yaml.in" > "$work/lab/analysis.yaml"
as_analyst session update "$work/lab/analysis.yaml"
if runtime lab/analysis/job 2> "$work/refused.txt"; then echo "the modified job ran!" >&2; exit 1; fi
grep "pinned at hash" "$work/refused.txt"
echo
echo "demo: done."
