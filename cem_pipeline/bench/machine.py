"""What a benchmark figure depends on besides the code: the CPU (model, cores, the SIMD extensions
that pick a kernel), the library versions and how busy the machine was. Recorded beside every
result, since a ratio measured on one machine says little about another."""
from __future__ import annotations

import datetime
import os
import platform

from cem_pipeline.core.cpu import cpu_model_and_flags

# flags that change which kernel runs or how fast: AVX-512 VNNI + VBMI select the integer dHash kernel
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_vbmi", "avx512_bf16", "amx_bf16")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # a missing or broken library is recorded, not fatal
        return "absent"


def _vnni_kernel_used() -> bool:
    from cem_pipeline.ingest.hashing import vnni_kernel

    return bool(vnni_kernel.available())


def machine_info() -> dict:
    """The facts above as a JSON-able dict (load average at the time of the call)."""
    model, flags = cpu_model_and_flags()
    try:
        import llvmlite.binding as llvm

        microarch = llvm.get_host_cpu_name()
    except Exception:
        microarch = "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return {
        "cpu_model": model,
        "cpu_microarch": microarch,
        "cores": os.cpu_count() or 1,
        "usable_cores": usable,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "vnni_dhash_kernel": _vnni_kernel_used(),
        "gpu": gpu,
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "numba": _version("numba"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_key(info: dict) -> str:
    """The part of `machine_info` that names a machine (one BENCHMARKS.md section per key)."""
    return f"{info['cpu_model']} ({info['cpu_microarch']}), {info['cores']} cores, GPU {info['gpu']}"


def machine_summary(info: dict) -> str:
    present = [flag for flag, on in info["cpu_flags"].items() if on]
    absent = [flag for flag, on in info["cpu_flags"].items() if not on and flag.startswith("avx512")]
    vnni = "used" if info["vnni_dhash_kernel"] else "not used (no AVX-512 VNNI+VBMI): float kernel"
    return (f"{machine_key(info)}; flags: {', '.join(present) or 'none of interest'}"
            f"{'; without ' + ', '.join(absent) if absent else ''}; VNNI dHash kernel {vnni}; "
            f"Python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, numba {info['numba']}")
