"""The machine a benchmark ran on, for the first line of its table: machines here differ in bfloat16 support."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The SIMD flags that decide convolution speed, and whether bfloat16 runs natively (AVX512-BF16 or AMX).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description() -> str:
    """The CPU model, the cores this process may use, and each of :data:`SPEED_FLAGS` as yes or no."""
    model, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    shown = " ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in SPEED_FLAGS)
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs, {shown}"
