import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every Hub lookup would otherwise retry for ~25 s
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
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


def tiny_run_overrides(output_dir, data, *extra) -> list[str]:
    """Overrides shrinking configs/tiny-kl.yaml to a model that trains a step in well under a second."""
    return [f"output_dir={output_dir}", f"data.train={data}", "data.resolution=32", "data.num_workers=0",
            "data.shuffle_buffer=8", "model.block_out_channels=[16,32]", "model.norm_num_groups=8",
            "loss.disc.channels=16", "loss.disc.start=2", "loss.disc.warmup_steps=2", "train.batch_size=4",
            "train.log_every=1", "train.image_every=0", "eval.every=0", *extra]


def free_port() -> int:
    """A TCP port nobody listens on now (torchrun's --master_port 0 hangs with the c10d rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty torch hub cache ($TORCH_HOME) and a network that always fails: the offline cluster node."""
    import urllib.error

    from latentae import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dest, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(weights, "_download", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"
