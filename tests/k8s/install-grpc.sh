#!/usr/bin/env bash
# tests/k8s/install-grpc.sh — the Python gRPC stack the kubelet stand-in runs on (grpcio, and
# grpcio-tools to compile tools/k8s/proto/ at test time), in a virtual environment cached outside
# the clone: ${VGPUD_CACHE:-/var/cache/vgpud}/kubelet-standin/venv, wheels kept in
# ${VGPUD_CACHE}/pip. Independent of the Rust gRPC stack (tonic, prost, h2) the agent uses.
# Prints the venv's python. Seconds the first time (~10 MB of wheels), instant afterwards.
# Env: VGPUD_CACHE.
set -euo pipefail
CACHE=${VGPUD_CACHE:-/var/cache/vgpud}
VENV=$CACHE/kubelet-standin/venv
GRPC=1.85.1
PY=$VENV/bin/python3
if [ -x "$PY" ] && "$PY" -c "import grpc, grpc_tools; assert grpc.__version__ == '$GRPC'" 2>/dev/null; then
    echo "$PY"
    exit 0
fi
command -v python3 >/dev/null || { echo "install-grpc.sh: needs python3" >&2; exit 1; }
rm -rf "$VENV"
mkdir -p "$CACHE/pip" "$(dirname "$VENV")"
python3 -m venv "$VENV" >&2
"$PY" -m pip install -q --cache-dir "$CACHE/pip" --disable-pip-version-check \
    "grpcio==$GRPC" "grpcio-tools==$GRPC" >&2
"$PY" -c "import grpc; print('grpcio', grpc.__version__)" >&2
echo "$PY"
