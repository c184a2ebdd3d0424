import os
from pathlib import Path

import pytest

# Tests compare fp32 results: oneDNN reads this when torch loads, and BF16 / TF32 here would make fp32 convolutions
# (on CPUs with AMX) round like bf16, far beyond every tolerance below.
os.environ.pop("ONEDNN_DEFAULT_FPMATH_MODE", None)
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every Hub lookup would otherwise retry for ~25 s
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# `precision: auto` (the commands' and train.mixed_precision's default) resolves to fp32 without measuring, so no
# result depends on the machine's bf16 speed (subprocesses inherit it; tests/test_precision.py lifts it)
os.environ["LATENTAE_AUTO_PRECISION"] = "fp32"
# and the thread count is fixed, not taken from the CPUs other processes leave free (latentae.threads)
os.environ["LATENTAE_THREADS"] = str(min(2, os.cpu_count() or 1))
torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout (real photos); tests that need it skip on a bare clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real images not found at {SHARED_DATA.resolve()} (see shared/data/README.md)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    """A folder of 24 procedural 48-px PNGs (no download, no ../shared needed)."""
    from latentae.demo import write_demo_images

    folder = tmp_path_factory.mktemp("demo-images")
    write_demo_images(folder, count=24, size=48)
    return folder


def write_dino_vit(path: Path, layers: int = 4) -> Path:
    """A random-init transformers ViT shaped like facebook/dino-vits8 but tiny (32 wide, 4 layers: taps after the last
    block and block 2; 8 px patches of 32 px: 16 tokens), saved as a local directory for loss.disc.weights."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(2)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=32), add_pooling_layer=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def dino_vit(tmp_path_factory) -> Path:
    return write_dino_vit(tmp_path_factory.mktemp("dino-vit"))


def tiny_run_overrides(output_dir, data, *extra) -> list[str]:
    """Overrides shrinking configs/tiny-kl.yaml to a model that trains a step in well under a second."""
    return [f"output_dir={output_dir}", f"data.train={data}", "data.resolution=32", "data.num_workers=0",
            "data.shuffle_buffer=8", "model.block_out_channels=[16,32]", "model.norm_num_groups=8",
            "loss.disc.channels=16", "loss.disc.start=2", "loss.disc.warmup_steps=2", "train.batch_size=4",
            "train.log_every=1", "train.image_every=0", "eval.every=0",
            "train.mixed_precision=fp32", *extra]  # tests compare numbers: never the machine-dependent auto


def free_port() -> int:
    """A TCP port nobody listens on now (torchrun's --master_port 0 hangs with the c10d rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch hub cache ($TORCH_HOME) and Hugging Face cache, and a network that always fails: the offline
    cluster node."""
    import urllib.error

    from latentae import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dest, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(weights, "_download", no_network)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # no DINOv2 either
    return tmp_path / "torch" / "hub" / "checkpoints"


# fp32 results of one computation run with other kernels: oneDNN, MKL and ATen choose kernels (blocking, vector width,
# summation order) per batch size, thread count, memory format and CPU, so the same network on the same image rounds
# differently in a batch of 1 and of 4, on 1 and 2 threads, on AMD Zen 4 and on Intel Xeon. A sum of K terms added in
# another order differs by ~sqrt(K) fp32 roundoffs (6e-8) of its scale: 1.4e-6 for the longest sums of the tiny test
# models (K = 64 channels x 3 x 3), so each layer may add 2e-6 of the values' largest magnitude. Measured: at most
# 3e-7 per layer (batches of 1 to 7, 1 to 3 threads, AVX2 / AVX-512 oneDNN, ATen and MKL kernels). A wrong op, weight
# or noise draw is off by ~1e-1 of that magnitude: 3 orders above the bound of a 40-layer model.
KERNEL_RTOL_PER_LAYER = 2e-6


def weight_layers(*modules: torch.nn.Module) -> int:
    """Convolutions and linear layers in `modules`: a bound on how often a value is re-rounded on its way through
    (parallel branches, such as attention's q, k and v, each count)."""
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for module in modules for m in module.modules())


def assert_close_across_kernels(actual, expected, *, layers: int, scale: float | None = None) -> None:
    """fp32 `actual` equals `expected` up to kernel choice: |difference| <= layers x 2e-6 x scale, scale by default
    max|expected| (pass the values' own for a mean of them). For results computed in another batch, process, memory
    format or op order; bit-identical computations compare exactly."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    tolerance = layers * KERNEL_RTOL_PER_LAYER * (expected.abs().max().item() if scale is None else scale)
    torch.testing.assert_close(actual, expected, rtol=0, atol=tolerance)
