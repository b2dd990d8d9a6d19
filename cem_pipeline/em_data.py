"""Where the benchmarks find the real EM data: CEM_SHARED_EM, else ../shared/data/em beside the checkout.

Resolved from this file, not the working directory, so `cem bench ...` finds it from anywhere.
"""
from __future__ import annotations

import os
from pathlib import Path


def shared_em_root() -> Path:
    return Path(os.environ.get("CEM_SHARED_EM", Path(__file__).resolve().parents[2] / "shared" / "data" / "em"))
