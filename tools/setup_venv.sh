#!/usr/bin/env bash
# Create (or reuse) the Python reference-tooling venv at <repo>/.venv-tools.
# Idempotent: rerunning only installs what is missing. Python is never a
# runtime or CI dependency of the Swift package; these tools are run by hand.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-tools"
PY="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0+cpu"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PY" -m venv "$VENV"
fi

if "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import torch, numpy, safetensors
assert torch.__version__ == "2.13.0+cpu", torch.__version__
PYEOF
then
    echo "venv already complete: $VENV"
else
    # torch resolves from the machine's configured local wheel folder
    # (pip's find-links); numpy and safetensors come from the registry.
    "$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" numpy safetensors
fi

"$VENV/bin/python" -c 'import torch, numpy, safetensors; print("torch", torch.__version__, "numpy", numpy.__version__, "safetensors", safetensors.__version__)'
echo "activate with: source $VENV/bin/activate"
