"""What machine a result was measured on: written beside every number in results/."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (other jobs sharing the cores show up here)."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, CUDA, library versions, platform and load average."""
    import torch

    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("triton", "vector-quantize-pytorch"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "versions": versions,
        "platform": platform.platform(),
        "loadavg": loadavg(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for a results file: CPU, cores, torch and its threads, platform, load average."""
    info = info or machine_info()
    line = (
        f"{info['cpu']}, {info['logical_cpus']} logical cores, torch {info['versions']['torch']} with "
        f"{info['torch_threads']} threads, {info['platform']}"
    )
    if info.get("loadavg"):
        line += f", load average {', '.join(map(str, info['loadavg']))} (other jobs may share the cores)"
    return line
