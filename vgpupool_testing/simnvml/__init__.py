"""A simulated NVML for MIG: a drop-in for the parts of `pynvml` a node agent calls.

    from vgpupool_testing.simnvml import SimNvml, load
    nvml = SimNvml.from_yaml("gpus: [{model: NVIDIA A100-PCIE-40GB, count: 2, mig: true}]")
    nvml.nvmlInit()
    dev = nvml.nvmlDeviceGetHandleByIndex(0)
    info = nvml.nvmlDeviceGetGpuInstanceProfileInfo(dev, nvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    p = nvml.c_nvmlGpuInstancePlacement_t(4, 4)
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(dev, info.id, ctypes.byref(p))

Test hooks, faults and the snapshot format are described on SimNvml and in faults.py.
"""

from .config import from_dict, from_yaml, load
from .faults import CallError, DestroyInUse, Fault, HideProfile, NoPermission, StuckPending
from .sim import ALIASES, DEFAULT_DRIVER_VERSION, GpuSpec, SimNvml, SimUsageError

__all__ = [
    "ALIASES",
    "DEFAULT_DRIVER_VERSION",
    "CallError",
    "DestroyInUse",
    "Fault",
    "GpuSpec",
    "HideProfile",
    "NoPermission",
    "SimNvml",
    "SimUsageError",
    "StuckPending",
    "from_dict",
    "from_yaml",
    "load",
]
