#!/usr/bin/env bash
# Regenerate serving/grpc/grpc_predict_v2_pb2{,_grpc}.py(i) from grpc_predict_v2.proto.
# Needs grpcio-tools (the dev extra). Run from anywhere: bash scripts/gen-grpc.sh
# OUT=DIR writes the tree under DIR instead (tests compare it with the checked-in files).
#
# The messages are built in a private descriptor pool, not protobuf's default one: Triton's
# client (grpc_service.proto) and KServe's SDK (grpc_predict_v2.proto) register the same
# 'inference.*' names there, and a process that imports one of them beside the sidecar (a test,
# a notebook) would otherwise fail with "duplicate symbol". The wire format does not change.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-.}
out=serving/grpc
mkdir -p "$OUT/$out"
"$PYTHON" -m grpc_tools.protoc -I. --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
  "$out/grpc_predict_v2.proto"
"$PYTHON" - "$OUT/$out/grpc_predict_v2_pb2.py" <<'PY'
import sys
from pathlib import Path

path = Path(sys.argv[1])
src = path.read_text()
old = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
assert src.count(old) == 1, "protoc output changed: update scripts/gen-grpc.sh"
src = src.replace(old, "POOL = _descriptor_pool.DescriptorPool()  # private: see gen-grpc.sh\n"
                       "DESCRIPTOR = POOL.AddSerializedFile(")
path.write_text(src)
PY
echo "regenerated $OUT/$out/grpc_predict_v2_pb2.py, _pb2.pyi, _pb2_grpc.py"
