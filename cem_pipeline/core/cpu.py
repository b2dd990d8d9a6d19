"""The CPU's model name and feature flags, as every recorded figure (benchmarks, experiments) names them."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model_and_flags(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """/proc/cpuinfo's first model name and flags; platform's processor name and no flags where it is absent."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = path.read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags
