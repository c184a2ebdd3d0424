"""What a validation measures and how train.export=best ranks it.

A model with a structured latent (DC-AE 1.5) serves several channel counts, so it is validated at each count
`eval.channels` names (every count of the model's by default): one encode + decode pass per count over the same
images, logged as `val/<metric>@<n>`, and their mean over the counts as `val/<metric>@mean`. Best is ranked by that
mean: the export serves every count, so its weights should be the best on average. The worst count is no rule: it
is nearly always the smallest, so it would rank by that count alone. A model without one is validated once, as
`val/<metric>`.
"""
from __future__ import annotations

from latentae.trainer.channels import chosen_counts
from latentae.trainer.config import EXPORT_METRICS

MEAN = "mean"


class Validation:
    """The channel counts a run validates (empty: the model has no structured latent) and the names of what it
    logs."""

    def __init__(self, model, channels: list[int] | None):
        counts = chosen_counts(model, channels, "eval.channels", distinct=True)
        self.counts = tuple(sorted(counts))

    def models(self, model) -> dict:
        """What one validation evaluates, by the suffix of its logged names: the model at each count, or itself."""
        if not self.counts:
            return {"": model}
        return {f"@{n}": model.at_channels(n) for n in self.counts}

    def values(self, results: dict) -> dict[str, float]:
        """The logged values of `results` (EvalResults by suffix, as `models` names them), with each ranking metric's
        mean over the counts when there are counts."""
        values = {f"val/{k}{suffix}": float(v) for suffix, result in results.items()
                  for k, v in result.metrics.items() if isinstance(v, (int, float))}
        for metric in EXPORT_METRICS if self.counts else ():
            each = [values.get(f"val/{metric}@{n}") for n in self.counts]
            if None not in each:
                values[f"val/{metric}@{MEAN}"] = sum(each) / len(each)
        return values

    def key(self, metric: str) -> str:
        """The logged name train.export=best ranks by."""
        return f"val/{metric}@{MEAN}" if self.counts else f"val/{metric}"

    def selection(self) -> dict:
        """What else identifies the ranking in the export's metadata: a mean over other counts is another measure."""
        return {"channels": list(self.counts)} if self.counts else {}

    def describe(self) -> str | None:
        """The cost of each validation, said once (None: one pass, as for any model)."""
        if not self.counts:
            return None
        return (f"validation at {len(self.counts)} channel counts ({', '.join(map(str, self.counts))}): "
                f"{len(self.counts)} encode + decode passes per image; train.export=best ranks by their mean "
                "(eval.channels picks fewer)")

    def line(self, values: dict[str, float], shown=("psnr", "ssim", "lpips", "rfid")) -> str:
        """The metrics of `shown` in `values` for the progress line: each with its counts in brackets."""
        parts = []
        for metric in shown:
            key = self.key(metric)
            if key not in values:
                continue
            each = "" if not self.counts else " (" + ", ".join(
                f"c{n} {values[f'val/{metric}@{n}']:.4g}" for n in self.counts) + ")"
            parts.append(f"{key[4:]} {values[key]:.4g}{each}")
        return ", ".join(parts)
