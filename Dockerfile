# syntax=docker/dockerfile:1
#
# vgpu-pool: one image for both programs.
#   vcplugin serve   the extender sidecar beside vc-scheduler  (runs as the non-root user 65532)
#   nodeagent run    the DaemonSet on every GPU node            (runs as root: see below)
# Neither is the entrypoint; the Helm chart (helm/vgpu-pool) names the command of each container.
#
# Build:   docker build -t REGISTRY/vgpu-pool:0.1.0 .
# Pinning: the base image by tag (add "@sha256:..." to PYTHON_IMAGE to pin it by digest:
#          `docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints it), the Python
#          dependencies by version and hash (requirements.lock, made by deploy-tools/lock-requirements.sh),
#          and the one build tool (setuptools) by version.
#
# The node agent needs, from the node rather than from this image:
#   - the NVIDIA driver's libnvidia-ml.so.1, injected by the NVIDIA container runtime: the chart sets
#     NVIDIA_VISIBLE_DEVICES=all, NVIDIA_DRIVER_CAPABILITIES=utility, NVIDIA_MIG_CONFIG_DEVICES=all and
#     NVIDIA_MIG_MONITOR_DEVICES=all (MIG config/monitor also need CAP_SYS_ADMIN in the container);
#   - hostPath /var/lib/kubelet/device-plugins (kubelet.sock and the agent's sockets);
#   - hostPath /usr/local/vgpu (HAMi-core: libvgpu.so and ld.so.preload) and /tmp/vgpulock;
#   - hostPath /var/lib/vgpu-pool (its record of the MIG instances it created).
# It runs as root because those host directories and NVML's MIG management are root's.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with the locked dependencies and the project's wheel -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Dependencies first (this layer survives source changes). Binary wheels only, every file
# checked against the lock's hashes: nothing is compiled and nothing unpinned is fetched.
COPY requirements.lock ./
RUN python -m venv /opt/vgpu-pool \
 && /opt/vgpu-pool/bin/pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements.lock

# The project, built without build isolation so that the pinned setuptools is the one used.
COPY pyproject.toml README.md ./
COPY vcplugin ./vcplugin
COPY nodeagent ./nodeagent
COPY vgpupool_testing ./vgpupool_testing
RUN pip install --no-cache-dir setuptools==80.9.0 \
 && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/vgpu-pool/bin/pip install --no-cache-dir --no-deps --no-index --find-links /wheels vgpu-pool \
 && /opt/vgpu-pool/bin/pip uninstall --yes pip setuptools \
 && /opt/vgpu-pool/bin/vcplugin --help >/dev/null \
 && /opt/vgpu-pool/bin/nodeagent --help >/dev/null

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="vgpu-pool" \
      org.opencontainers.image.description="Dynamic GPU slicing for Volcano: extender sidecar (vcplugin) and node agent (nodeagent)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/vgpu-pool /opt/vgpu-pool
ENV PATH=/opt/vgpu-pool/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532 ("nonroot" in distroless images) owns nothing here: the sidecar only reads its mounted
# files and talks HTTP. The node agent's pod overrides this with runAsUser: 0 (see the chart).
USER 65532:65532
WORKDIR /tmp
CMD ["vcplugin", "--help"]
