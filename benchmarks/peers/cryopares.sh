#!/usr/bin/env bash
# Install cryoPARES 0.1.9 for CPU benchmarks into its own virtualenv outside the repository.
#
# The venv goes to ${CRYOPOSE_PEERS:-$HOME/.cache/cryopose-peers}/cryopares. Running the script
# again is cheap: each step is skipped when its result is already there. Why the steps look the
# way they do (from the developers' PEERS notes):
#   - cryopares==0.1.9 pins torch 2.8 and pulls a CUDA torchvision, so torch 2.13 CPU and
#     torchvision 0.28 are installed first and cryopares without its dependencies;
#   - the rest of its dependencies are installed against a constraint that keeps torch 2.13;
#   - the torchvision wheel then fails at import ("operator torchvision::nms does not exist"):
#     its __init__ registers meta/autograd kernels for ops its C extension did not load, so
#     those two imports are guarded by extension._has_ops().
#
# Example usage: bash benchmarks/peers/cryopares.sh && $HOME/.cache/cryopose-peers/cryopares/bin/cryopares_train --help
set -euo pipefail

PEERS="${CRYOPOSE_PEERS:-$HOME/.cache/cryopose-peers}"
VENV="$PEERS/cryopares"
PY="$VENV/bin/python"
mkdir -p "$PEERS"

if [ ! -x "$PY" ]; then
    # The system python (not an activated project venv) so the peer shares nothing with cryopose.
    "${PYTHON:-python3}" -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
fi

pip_has() { "$PY" -m pip show "$1" >/dev/null 2>&1; }

if ! pip_has torch || [ "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" != "2.13.0" ]; then
    "$PY" -m pip install --quiet torch==2.13.0
fi
if ! pip_has cryopares || ! pip_has torchvision; then
    "$PY" -m pip install --quiet --no-deps cryopares==0.1.9 torchvision==0.28.0
fi

echo torch==2.13.0 > "$PEERS/torch_pin.txt"
if [ ! -f "$VENV/.cryopose-deps-done" ]; then
    # cryoPARES's own requirement ranges minus torch/torchvision (an unconstrained list, as in
    # the notes, resolves to pandas 3 / cachetools 8 / pytest 9, outside what it declares).
    "$PY" - > "$PEERS/cryopares_requirements.txt" <<'PYEOF'
from importlib.metadata import requires

for req in requires("cryopares") or []:
    if req.split("<")[0].split(">")[0].split("[")[0].strip() not in {"torch", "torchvision"}:
        print(req)
PYEOF
    "$PY" -m pip install --quiet -c "$PEERS/torch_pin.txt" -r "$PEERS/cryopares_requirements.txt"
    touch "$VENV/.cryopose-deps-done"
fi

# The torchvision import fix, applied once (a marker comment makes it idempotent).
"$PY" - <<'PYEOF'
import importlib.util
import pathlib
import re

spec = importlib.util.find_spec("torchvision")
assert spec is not None and spec.origin is not None, "torchvision is not installed"
init = pathlib.Path(spec.origin)
text = init.read_text()
if "cryopose-peers patch" not in text:
    block = re.search(r"^from torchvision import \((.*?)\)[^\n]*\n", text, re.S | re.M)
    if block is None or "_meta_registrations" not in block.group(1):
        raise SystemExit(f"torchvision patch: registration imports not found in {init}")
    names = [n.strip() for n in block.group(1).split(",") if n.strip()]
    kept = [n for n in names if n not in {"_meta_registrations", "_autograd_registrations"}]
    new = (
        "from torchvision import " + ", ".join(kept) + "  # usort:skip\n"
        "if extension._has_ops():  # cryopose-peers patch: CPU wheel without the nms op\n"
        "    from torchvision import _autograd_registrations, _meta_registrations\n"
    )
    init.write_text(text[: block.start()] + new + text[block.end() :])
    print(f"patched {init}")
PYEOF

"$PY" -c "import torchvision, cryoPARES"
"$VENV/bin/cryopares_train" --help >/dev/null
"$VENV/bin/cryopares_infer" --help >/dev/null
"$PY" - <<'PYEOF'
from importlib.metadata import version

print("cryoPARES peer ready:", ", ".join(
    f"{name} {version(name)}" for name in ("cryopares", "torch", "torchvision", "lightning", "e3nn")
))
PYEOF
