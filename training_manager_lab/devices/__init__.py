"""Resource inventory of a node (CPU, memory, GPUs through one NVML seam) and usage attribution."""

from training_manager_lab.devices.attribution import (
    ProcessRefused,
    attribute,
    end_process,
    find_orphans,
    gpu_processes,
    tree_usage,
)
from training_manager_lab.devices.history import Sampler, sample_cost
from training_manager_lab.devices.inventory import (
    allocatable_gpus,
    local_inventory,
    visible_gpu_indices,
)
from training_manager_lab.devices.nvml import (
    GpuProbe,
    NvmlProbe,
    RecordedProbe,
    get_probe,
    set_probe,
)

__all__ = [
    "GpuProbe",
    "NvmlProbe",
    "ProcessRefused",
    "RecordedProbe",
    "Sampler",
    "allocatable_gpus",
    "attribute",
    "end_process",
    "find_orphans",
    "get_probe",
    "gpu_processes",
    "local_inventory",
    "sample_cost",
    "set_probe",
    "tree_usage",
    "visible_gpu_indices",
]
