"""Which device a plan is for, and how much memory it has (`adapt plan --device`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapt.errors import UsageError

GiB = 2**30
MiB = 2**20


@dataclass
class Device:
    kind: str  # "cpu" or "cuda"
    capacity: int | None  # bytes the run may use, None when unknown
    label: str


def parse_device(spec: str | None) -> Device:
    """`--device`: "cpu" (this machine's available memory), "cuda" (this machine's GPU), or a GPU size
    ("24GiB", "80GB", "16000MiB"); None picks CUDA when there is one, else the CPU."""
    import torch

    if spec is None:
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return Device("cpu", available_cpu_memory(), "cpu")
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device here; give the GPU's memory instead, e.g. --device 24GiB")
        props = torch.cuda.get_device_properties(0)
        return Device("cuda", props.total_memory, f"{props.name} ({props.total_memory / GiB:.0f} GiB)")
    match = re.fullmatch(r"\s*([0-9.]+)\s*(GiB|GB|MiB|MB|TiB|TB)\s*", spec, flags=re.IGNORECASE)
    if not match:
        raise UsageError(f"--device: expected cpu, cuda or a GPU's memory such as 24GiB or 80GB, got {spec!r}")
    units = {"gib": GiB, "gb": 10**9, "mib": MiB, "mb": 10**6, "tib": 2**40, "tb": 10**12}
    capacity = int(float(match.group(1)) * units[match.group(2).lower()])
    if capacity <= 0:
        raise UsageError(f"--device: a GPU's memory must be above zero, got {spec!r}")
    return Device("cuda", capacity, f"a {capacity / GiB:.0f} GiB GPU")


def available_cpu_memory() -> int | None:
    from adapt.run.report import proc_kib

    available = proc_kib("/proc/meminfo", "MemAvailable")
    return None if available is None else available * 1024


def gib_text(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"
