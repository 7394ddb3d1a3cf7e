#!/usr/bin/env bash
# The quickstart: an unmodified program receives a generated secret through its
# environment, its arguments and an injected config file, only after attestation.
# Then the same session refuses a modified program. Run it with `make demo`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
veil="${VEIL:-$top/.venv/bin/veil}"
work="${VEIL_DEMO_DIR:-$top/.veil-demo}"
# The real interpreter, not a wrapper script (pyenv shims, venv links) in front of it.
python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$work"
mkdir -p "$work/app"
cp "$here/app.py" "$work/app/app.py"
export VEIL_HOME="$work/home"

step "1. measure the program (interpreter + script, by content)"
echo "\$ veil measure -- $python $work/app/app.py"
measurement="$("$veil" measure -v -- "$python" "$work/app/app.py")"
echo "$measurement"

step "2. write the session and check it"
sed -e "s|@PYTHON@|$python|" -e "s|@APP@|$work/app/app.py|" -e "s|@MEASUREMENT@|$measurement|" \
  "$here/session.yaml.in" > "$work/session.yaml"
"$veil" session check "$work/session.yaml"

step "3. run it: attest, receive the secret, start the unmodified program"
"$veil" run --policy "$work/session.yaml" --service app

step "4. run it again: the generated secret is the same"
"$veil" run -q --policy "$work/session.yaml" --service app | grep 'environment:'

step "5. modify the program and run the same session: refused"
echo 'print("app: I was modified")' >> "$work/app/app.py"
set +e
"$veil" run -q --policy "$work/session.yaml" --service app
code=$?
set -e
echo "(exit code $code)"
[ "$code" -eq 1 ] || { echo "demo: expected a refusal with exit code 1" >&2; exit 1; }

step "6. the audit log recorded every decision"
"$veil" audit show
"$veil" audit verify
echo
echo "demo: done. Injected files lived only in memory; nothing of the secret is on disk."
