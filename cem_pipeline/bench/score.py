"""`cem bench score`: our scoring kernel against the paper's classify_nn.py way, in the same process.

Baseline: per-patch PIL image -> torchvision Resize(224) / Grayscale(3) / ToTensor / Normalize in a
DataLoader with batch 128, fp32 NCHW model under no_grad. Ours: `score_images` (batched uint8 ->
tensor preprocessing, channels_last, inference_mode, bf16 autocast on CUDA or a CPU with native
bf16, as `cem filter` runs it by default); the fp32 variant is reported beside it.
Pixel content does not change a CNN's speed, so the patches are seeded noise.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from cem_pipeline.filter.classifier import IMAGENET_MEAN, IMAGENET_STD, build_model
from cem_pipeline.filter.scoring import prepare_model, score_images, use_bf16


def _baseline(model: torch.nn.Module, patches: list[np.ndarray], device: torch.device) -> np.ndarray:
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose(
        [transforms.Resize(224), transforms.Grayscale(3), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )

    class Patches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(patches)

        def __getitem__(self, index: int) -> torch.Tensor:
            return transform(Image.fromarray(patches[index]))

    scores = []
    with torch.no_grad():
        for batch in DataLoader(Patches(), batch_size=128, shuffle=False):
            scores.append(torch.sigmoid(model(batch.to(device))).squeeze(1).cpu())
    return torch.cat(scores).numpy()


def run(n: int = 128, batch_size: int = 64, seed: int = 0) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(seed)
    patches = [rng.integers(0, 256, (224, 224), dtype=np.uint8) for _ in range(n)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    baseline_model = model.eval().to(device)
    _baseline(baseline_model, patches[: min(n, 8)], device)  # warm-up: allocator, oneDNN/cuDNN kernels
    start = time.perf_counter()
    _baseline(baseline_model, patches, device)
    baseline_s = time.perf_counter() - start

    ours_model = prepare_model(build_model().eval(), device)
    ours_model.load_state_dict(baseline_model.state_dict())
    timings = {}
    for name, bf16 in (("ours", use_bf16(device, cpu_bf16=True)), ("ours_fp32", False)):
        score_images(ours_model, patches[: min(n, 8)], 224, batch_size, device, bf16)
        start = time.perf_counter()
        score_images(ours_model, patches, 224, batch_size, device, bf16)
        timings[name] = (time.perf_counter() - start, bf16)
    ours_s, bf16 = timings["ours"]
    return {
        "baseline_per_s": n / baseline_s,
        "ours_per_s": n / ours_s,
        "ratio": baseline_s / ours_s,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "bf16": bf16,
        "ours_fp32_per_s": n / timings["ours_fp32"][0],
        "n": n,
        "batch_size": batch_size,
    }
