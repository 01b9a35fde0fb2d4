#!/bin/sh
# Regenerate api_pb2.py / api_pb2_grpc.py from api.proto with grpcio-tools (the repo's .venv has it).
#
# protoc runs from the repo root so the descriptor is registered as "nodeagent/podresources/api.proto"
# rather than a bare "api.proto", which the device-plugin API (nodeagent/deviceplugin/api.proto) also
# uses and which would clash in protobuf's default descriptor pool. The grpc module's absolute import
# of the pb2 module is then rewritten to a relative one.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
cd "$root"
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. nodeagent/podresources/api.proto
sed -i 's/^from nodeagent\.podresources import api_pb2 as /from . import api_pb2 as /' \
    nodeagent/podresources/api_pb2_grpc.py
grep -q '^from \. import api_pb2 as ' nodeagent/podresources/api_pb2_grpc.py
