"""The held-out photos every configuration is measured on, and the measurement."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .study import HELDOUT, Budget


def heldout_sets(budget: Budget, data_root: Path) -> list[tuple[str, list]]:
    """(label, sources) of each held-out set: all its images, or the budget's first N."""
    from latentae.data.sources import expand_sources

    sets = []
    for label, folder in HELDOUT:
        sources = expand_sources(str(data_root / folder))
        sets.append((label, sources[: budget.heldout_cap] if budget.heldout_cap else sources))
    return sets


class HeldOut:
    """Measures a model on the held-out photos: evaluate() once over both sets (fp32, center crops at the
    training resolution), per-set PSNR / SSIM from its per-image values, and the sharpness statistic."""

    def __init__(self, cfg, budget: Budget, data_root: Path):
        from latentae.data import eval_loader

        sets = heldout_sets(budget, data_root)
        self.sets = [(label, {s.key for s in sources}) for label, sources in sets]
        spec = ",".join(s.url for _, sources in sets for s in sources)
        self.n_images = sum(len(keys) for _, keys in self.sets)
        # decoded and cropped once, kept in memory (224 crops: 11 MB at 64 px, 176 MB at 256 px): every evaluation
        # of the run then costs only the model and the metrics
        self.batches = list(eval_loader(dataclasses.replace(cfg.data, num_workers=0), batch_size=32, source=spec))
        self.examples = None

    def measure(self, model) -> dict:
        from latentae.evaluation import evaluate
        from latentae.evaluation.sharpness import high_frequency_ratio

        result = evaluate(model, self.batches, metrics=("psnr", "ssim"), examples=self.n_images,
                          data_name="the held-out photos")
        point = {"psnr": result.metrics["psnr"], "ssim": result.metrics["ssim"], "n_images": result.n_images}
        for label, keys in self.sets:
            idx = [i for i, k in enumerate(result.image_keys) if k in keys]
            for metric in ("psnr", "ssim"):
                point[f"{metric}/{label}"] = sum(result.per_image[metric][i] for i in idx) / max(len(idx), 1)
        for key in ("kl", "kl_per_channel", "active_channels", "latent_channels", "codebook_usage", "perplexity",
                    "codebook_size"):
            if key in result.metrics:
                point[key] = result.metrics[key]
        point["hf_ratio"] = high_frequency_ratio(result.examples["input"], result.examples["reconstruction"])
        self.examples = result.examples
        return point
