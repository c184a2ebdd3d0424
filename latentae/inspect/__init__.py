"""Latent-space tools from the VAE literature, as PNG figures: interpolation (linear / spherical), latent
arithmetic, prior samples, KL per channel, codebook usage and an anomaly ranking. CLI: `latentae inspect`."""
from latentae.inspect.diagnostics import SCORES, Scored, anomaly_scores, code_counts, kl_per_channel
from latentae.inspect.drawing import bar_chart, image_grid, stack_vertically
from latentae.inspect.latent_space import arithmetic, denormalize, interpolate, lerp, prior_samples, slerp

__all__ = ["SCORES", "Scored", "anomaly_scores", "arithmetic", "bar_chart", "code_counts", "denormalize",
           "image_grid", "interpolate", "kl_per_channel", "lerp", "prior_samples", "slerp", "stack_vertically"]
