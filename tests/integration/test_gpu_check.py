"""deploy/gpu-check.sh in its CPU mode (no GPU, or CUDA hidden): every check runs its CPU fallback at tiny
sizes, passes, and the output says that the GPU checks were skipped and the GPU figures not measured."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_script_cpu_mode(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    done = subprocess.run(["bash", str(REPO / "deploy" / "gpu-check.sh"), "--json", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CUDA checks SKIPPED" in done.stdout and "GPU checks skipped" in done.stdout
    assert "GPU throughput was not measured" in done.stdout
    summary = json.loads(out.read_text())
    assert summary["mode"] == "cpu" and summary["gpu_checks_skipped"] and summary["passed"]
    checks = {r["check"]: r for r in summary["results"]}
    assert set(checks) == {"augment", "filter_scoring", "moco_step", "infer", "throughput", "ddp", "compile"}
    assert all(r["passed"] and not r.get("skipped") for r in checks.values())
    assert checks["augment"]["max_abs_diff"] <= 0.02  # the torch (GPU) augmentation path agrees with the CPU kernel
    assert checks["ddp"]["ranks_bit_identical"] and checks["ddp"]["world"] == 2
    assert checks["compile"]["backend"] == "aot_eager" and checks["compile"]["loss_rel_diff"] <= 1e-4
    assert checks["throughput"]["images_per_s"] > 0


def test_checks_report_failures_instead_of_crashing(monkeypatch):
    from cem_pipeline.bench import gpu

    def broken(device, sizes):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(gpu.CHECKS, "augment", broken)
    lines = []
    summary = gpu.run_checks("cpu", only=["augment"], echo=lines.append)
    assert not summary["passed"] and "illegal memory access" in summary["results"][0]["error"]
    assert any(line.startswith("[FAIL] augment") for line in lines)
    with pytest.raises(ValueError, match="unknown check"):
        gpu.run_checks("cpu", only=["nope"], echo=lines.append)
