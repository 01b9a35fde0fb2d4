#!/bin/sh
# Regenerate api_pb2.py / api_pb2_grpc.py from api.proto with grpcio-tools (the repo's .venv has it).
#
# protoc runs from the repo root so the descriptor is registered as "nodeagent/deviceplugin/api.proto"
# rather than a bare "api.proto", which other kubelet APIs (podresources) also use and which would
# clash in protobuf's default descriptor pool. The grpc module's absolute import of the pb2 module
# is then rewritten to a relative one.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. nodeagent/deviceplugin/api.proto
sed -i 's/^from nodeagent\.deviceplugin import api_pb2 as /from . import api_pb2 as /' \
    nodeagent/deviceplugin/api_pb2_grpc.py
grep -q '^from \. import api_pb2 as ' nodeagent/deviceplugin/api_pb2_grpc.py
