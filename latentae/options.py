"""Choices the commands' options offer (train, encode, decode, stats, eval, probe) and the argparse types they
share: no heavy imports here, the CLI builds its parser from them on every call."""

PRECISIONS = ("auto", "fp32", "bf16")  # of the inference commands (see latentae.runtime); auto: latentae.precision
DEFAULT_PRECISION = "auto"
# Images per forward of encode / stats / decode / eval: the plain diffusers loop's batch. On 2 cores batches of 1-2
# cost 5-20% more per image and larger ones gain little or lose (batch 16: +40%); see BENCHMARKS.md
DEFAULT_BATCH_SIZE = 4
STORE_CHOICES = ("both", "mean", "sample")  # what a KL sample holds; see format.py
STORAGE_DTYPES = ("float32", "float16")  # stored latent precision (token ids are always int32)
CONVENTIONS = ("sd", "sd3", "sdxl", "wan", "flux2")  # normalization constants `stats --write` stores; see stats.py
IMAGE_METRICS = ("psnr", "ssim", "lpips", "rfid", "fd_dinov2", "cmmd")  # what `latentae eval --metrics` takes
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "rfid")  # fd_dinov2 and cmmd run a ViT-L per image, real and reconstructed
FID_PROTOCOLS = ("torchmetrics", "torch-fidelity", "pytorch-fid", "clean-fid")  # see evaluation/fid_protocols.py
DEFAULT_FID_PROTOCOL = "torchmetrics"
TILING = ("auto", "on", "off")  # tiled encode / decode in evaluation; see models/tiling.py
DEFAULT_TILING = "auto"  # tiles only where they were measured to leave the numbers as they are (models/tiling.py)
TILE_ABOVE_PIXELS = 1024 * 1024  # --tiling auto: images of more pixels than this (per image) are tiled
PROBE_BUDGETS = ("cpu", "gpu", "smoke")  # latentae probe --budget; each is a Budget in probe/model.py
PROBE_NORMALIZATIONS = ("measured", "config")  # latentae probe --normalize, the first the default; see probe/latents.py
NATIVE = "native"  # --resolution native: each image at its own size, cropped to a multiple of the model's downsampling


def resolution_or_native(text: str) -> int | None:
    """argparse type of --resolution: a side in pixels (>= 1), or "native" (None)."""
    if text == NATIVE:
        return None
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse reports the option name on ValueError)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1."""
    return [positive_int(v) for v in text.split(",") if v.strip()] or positive_int("")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value
