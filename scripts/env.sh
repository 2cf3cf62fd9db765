# Source me: creates the project's virtualenv (.venv) when missing and installs cryopose into it.
# torch goes in first, the CPU way (`pip install torch==2.13.0` takes the CPU wheel on this kind
# of machine); everything else is then installed against the pinned versions in requirements.lock,
# so pip never pulls a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CRYOPOSE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "cryopose: creating virtualenv $VENV" >&2
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.cryopose-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/requirements.lock" -nt "$STAMP" ]; then
    echo "cryopose: installing dependencies into $VENV" >&2
    python -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" >&2 || true
    python -m pip install --quiet torch==2.13.0 2>&1 | grep -v "is ignored" >&2 || true
    python -m pip install --quiet -c "$ROOT/requirements.lock" -e "$ROOT[dev]" 2>&1 | grep -v "is ignored" >&2 || true
    python -c "import cryopose, torch; assert torch.__version__.startswith('2.13.0')" || {
        echo "cryopose: installation failed (see pip output above)" >&2; exit 1; }
    touch "$STAMP"
fi
cd "$ROOT"
