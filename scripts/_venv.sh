# Sourced by scripts/serve and scripts/test: a virtual environment in .venv with
# the service and the client library installed from this checkout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PNS4ONES_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -c 'import ensurepip, venv' 2>/dev/null || { echo "$PY cannot make a virtual environment: sudo apt-get install python3-venv" >&2; exit 1; }
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi
PIP=(pip_quiet install -q --disable-pip-version-check)
pip_quiet() {  # pip's build chatter only when something fails
    local log; log="$(mktemp)"
    if ! "$VENV/bin/pip" "$@" >"$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi
    rm -f "$log"
}
# Dependencies first (cached after the first run), then our two packages
# rebuilt from the checkout, so the installed copy is always the current code.
"${PIP[@]}" "setuptools>=68" wheel "cython>=3.1"
"${PIP[@]}" --no-build-isolation "$ROOT$1" "$ROOT/clients/python$2"
"${PIP[@]}" --no-build-isolation --no-deps --force-reinstall "$ROOT" "$ROOT/clients/python"
# pip keeps setup.py's warning to itself: say it here when the send path was not compiled.
if [ -z "${PNS4ONES_PURE:-}" ] && ! "$VENV/bin/python" -m pns4ones.compiled >/dev/null 2>&1; then
    echo "scripts/${0##*/}: the send path runs as pure Python here (to compile it: apt-get install gcc python3-dev, then run this again)" >&2
fi
export PATH="$VENV/bin:$PATH"
