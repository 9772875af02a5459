"""`train.precision = "auto"`: bf16 autocast where the device computes bf16 natively, else fp32."""

from __future__ import annotations

from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AMX tiles, or AVX-512 with the BF16 extension.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(requested: str, device_kind: str | None = None) -> tuple[str, str]:
    """The precision a run uses ("fp32", "bf16" or "fp16") and why. `device_kind`: "cuda" or "cpu" (default:
    CUDA where there is one)."""
    import torch

    if requested != "auto":
        return requested, "train.precision in the recipe"
    cuda = torch.cuda.is_available() if device_kind is None else device_kind == "cuda"
    if cuda:
        if not torch.cuda.is_available():  # planning for a GPU that is not here: assume a current one
            return "bf16", "auto: a GPU computes bf16 natively (compute capability 8.0 and later)"
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(0)} computes bf16 natively"
        return "fp32", f"auto: {torch.cuda.get_device_name(0)} has no native bf16"
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in cpu_flags()]
    if found:
        return "bf16", f"auto: this CPU computes bf16 natively ({', '.join(found)})"
    return "fp32", "auto: this CPU has no native bf16 (neither AMX nor AVX512-BF16)"
