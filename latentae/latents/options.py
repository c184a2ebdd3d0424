"""Choices the `latentae encode / decode / stats` options offer: no heavy imports here, the CLI builds its parser
from them on every call."""

PRECISIONS = ("fp32", "bf16")  # see runtime.Runtime
STORE_CHOICES = ("both", "mean", "sample")  # what a KL sample holds; see format.py
STORAGE_DTYPES = ("float32", "float16")  # stored latent precision (token ids are always int32)
CONVENTIONS = ("sd", "sd3", "sdxl")  # normalization constants `stats --write` stores; see stats.py
