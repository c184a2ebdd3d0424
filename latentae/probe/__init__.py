"""The diffusability probe (`latentae probe`): how well a small diffusion transformer learns each autoencoder's
latent space, under the same seed, architecture, optimizer and budget for every model."""
from latentae.probe.model import BUDGETS, Budget
from latentae.probe.run import probe

__all__ = ["BUDGETS", "Budget", "probe"]
