"""Every resource name, annotation key and mode string in one place."""

from typing import Final

# Operating modes of a GPU (and the values of the pod's mode annotation).
MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODES: Final = (MODE_HAMI_CORE, MODE_MIG)

# Default resource names (the device config may rename them).
DEFAULT_RESOURCE_COUNT: Final = "nvidia.com/gpu"
DEFAULT_RESOURCE_MEMORY: Final = "nvidia.com/gpumem"
DEFAULT_RESOURCE_MEMORY_PERCENTAGE: Final = "nvidia.com/gpumem-percentage"
DEFAULT_RESOURCE_CORES: Final = "nvidia.com/gpucores"

# Pod annotations a user sets.
ANNO_VGPU_MODE: Final = "nvidia.com/vgpu-mode"
ANNO_VGPU_MODE_VOLCANO: Final = "volcano.sh/vgpu-mode"
ANNO_USE_GPUTYPE: Final = "nvidia.com/use-gputype"
ANNO_NOUSE_GPUTYPE: Final = "nvidia.com/nouse-gputype"
ANNO_USE_GPUUUID: Final = "nvidia.com/use-gpuuuid"
ANNO_NOUSE_GPUUUID: Final = "nvidia.com/nouse-gpuuuid"
ANNO_NODE_POLICY: Final = "hami.io/node-scheduler-policy"
ANNO_GPU_POLICY: Final = "hami.io/gpu-scheduler-policy"

# Scheduling policies.
POLICY_BINPACK: Final = "binpack"
POLICY_SPREAD: Final = "spread"
POLICY_FRAG_PACK: Final = "frag-pack"  # fragmentation-aware (vcplugin/core/fragmentation.py)
POLICIES: Final = (POLICY_BINPACK, POLICY_SPREAD, POLICY_FRAG_PACK)

# Node annotations (registration) and pod annotations (assignment), Volcano's vGPU format.
ANNO_NODE_REGISTER: Final = "volcano.sh/node-vgpu-register"
ANNO_NODE_HANDSHAKE: Final = "volcano.sh/node-vgpu-handshake"
ANNO_VGPU_NODE: Final = "volcano.sh/vgpu-node"
ANNO_VGPU_TIME: Final = "volcano.sh/vgpu-time"
ANNO_VGPU_IDS: Final = "volcano.sh/vgpu-ids-new"
ANNO_DEVICES_TO_ALLOCATE: Final = "volcano.sh/devices-to-allocate"
ANNO_BIND_PHASE: Final = "volcano.sh/bind-phase"
ANNO_BIND_TIME: Final = "volcano.sh/bind-time"
BIND_PHASE_ALLOCATING: Final = "allocating"
BIND_PHASE_SUCCESS: Final = "success"
BIND_PHASE_FAILED: Final = "failed"

# Our own annotations.
ANNO_MIG_LAYOUT: Final = "vgpu-pool.io/mig-layout"  # node: each MIG GPU's geometry and instances
ANNO_ASSIGNMENT: Final = "vgpu-pool.io/assignment"  # pod: exact devices, MIG profiles and placements
ANNO_SIGNATURE: Final = "vgpu-pool.io/assignment-signature"  # pod: HMAC of the assignment
ANNO_MIG_DEVICES: Final = "vgpu-pool.io/mig-devices"  # pod: MIG device UUIDs written by the node agent
ANNO_AGENT_STATUS: Final = "vgpu-pool.io/agent-status"  # node: geometry problems, pending MIG mode

# Pod label (selectable, unlike annotations): the node an assignment is for, so a node agent can
# watch the pods assigned to it before they are bound.
LABEL_ASSIGNED_NODE: Final = "vgpu-pool.io/node"

# Device type prefix in Volcano's registration and device strings.
DEVICE_VENDOR: Final = "NVIDIA"
