"""Named FID protocols: each gives, on the same images with the same weight file, the FID its library computes.

A FID moves with the resize filter, the quantization, the Inception port and the network's input scaling, so a
FID is citable only next to its protocol. `latentae eval --fid-protocol NAME` (FIDMetric takes the name):

  torchmetrics    (default, latentae's reports so far) torchmetrics' FrechetInceptionDistance as configured by
                  default: torch-fidelity's inception-v3-compat network, but torch's bilinear resize to 299 with
                  antialias (torchmetrics' own choice: no published FID resizes this way)
  torch-fidelity  torch-fidelity's own: the same network behind its TensorFlow-1-compatible bilinear resize (no
                  antialias); torchmetrics' antialias=False path is that code
  pytorch-fid     pytorch-fid's InceptionV3 (its pt_inception-2015-12-05 port) on the images as ToTensor gives them
                  (uint8 / 255), its own resize (bilinear to 299, align_corners=False, no antialias) and scaling to
                  [-1, 1]
  clean-fid       clean-fid's "clean" mode: each channel resized as a float32 PIL image (bicubic, PIL's filter
                  widens when shrinking) to 299, clipped to [0, 255], not quantized, into StyleGAN2-ADA's
                  TorchScript Inception through clean-fid's InceptionV3W

pytorch-fid and clean-fid run through their libraries' own classes (optional dependencies: pip install
pytorch-fid clean-fid). Every protocol's Fréchet distance is torchmetrics' (float64 statistics summed over
ranks); the libraries take scipy's sqrtm of the same covariances (tests/test_fid_protocols.py: equal within 1e-4
relative).

Not offered, ADM's evaluator (guided-diffusion evaluations/evaluator.py; GigaTok, LlamaGen): it runs the
TensorFlow graph of the 2015-12-05 Inception, resize included, so it needs TensorFlow and the graph file to be
checked against. torch-fidelity's network is a port of that graph (its TF-1 bilinear resize, (x - 128) / 128), so
`torch-fidelity` is the closest protocol here, but its equality with ADM's numbers is not verified.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import Tensor, nn

from latentae.errors import ModelFormatError
from latentae.options import DEFAULT_FID_PROTOCOL, FID_PROTOCOLS

INCEPTION_FEATURES = 2048


def plain_state_dict(path: Path) -> dict:
    """The file's tensors, loaded with weights_only=True: a tampered file cannot run code while unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any failure means "not a plain checkpoint"
        raise ModelFormatError(f"{path} is not a plain Inception state dict (refusing to unpickle it): "
                               f"{type(e).__name__}: {e}") from None


def sha256_prefix(path: Path, digits: int = 12) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()[:digits]


def _missing(package: str) -> ImportError:
    """The error of a protocol whose library (the pip package of the protocol's name) is not installed."""
    return ImportError(f"--fid-protocol {package} needs the {package} package: pip install {package}")


class _Frozen(nn.Module):
    """A feature extractor always in eval mode: batch norms keep their statistics whatever `.train()` a parent
    calls (pytorch-fid's own code calls eval() before extracting)."""

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)


class PytorchFIDFeatures(_Frozen):
    """pytorch-fid's pool features of uint8 [B, 3, H, W] images: its InceptionV3 with its resize and scaling."""

    num_features = INCEPTION_FEATURES

    def __init__(self, path: Path):
        super().__init__()
        try:
            from pytorch_fid import inception
        except ImportError:
            raise _missing("pytorch-fid") from None
        state = plain_state_dict(path)
        # pytorch-fid only loads its URL's cached copy (unpickled in full): hand it the resolved file's tensors
        with mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
            self.net = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_FEATURES]])
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() / 255)[0].flatten(1)  # ToTensor's float32 division


class CleanFIDFeatures(_Frozen):
    """clean-fid's "clean" features of uint8 [B, 3, H, W] images: its resizer, then its InceptionV3W."""

    num_features = INCEPTION_FEATURES

    def __init__(self, path: Path):
        super().__init__()
        try:
            from cleanfid.inception_torchscript import InceptionV3W
            from cleanfid.resize import build_resizer
        except ImportError:
            raise _missing("clean-fid") from None
        expected = "inception-2015-12-05.pt"
        if path.name != expected:  # InceptionV3W opens DIRECTORY/inception-2015-12-05.pt
            raise ModelFormatError(f"clean-fid's Inception must be a file named {expected}, got {path}")
        self.net = InceptionV3W(str(path.parent), download=False)
        self.resize = build_resizer("clean")
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        # the PIL resize runs per image and channel on the CPU, as in clean-fid's dataset
        resized = [torch.from_numpy(self.resize(a)).permute(2, 0, 1) for a in images.permute(0, 2, 3, 1).cpu().numpy()]
        return self.net(torch.stack(resized).to(images.device))


def _torchmetrics(antialias: bool) -> Callable[[Path], dict[str, Any]]:
    def build(path: Path) -> dict[str, Any]:
        plain_state_dict(path)  # torch-fidelity unpickles the file in full: only once it loads as plain tensors
        return {"feature": INCEPTION_FEATURES, "antialias": antialias, "feature_extractor_weights_path": str(path)}

    return build


@dataclass(frozen=True)
class FIDProtocol:
    name: str
    library: str  # whose FID it equals
    weights: str  # latentae.weights registry key of the Inception file
    preprocessing: str
    used_by: str  # who publishes FIDs this way (shared/REFERENCE.md)
    build: Callable[[Path], dict[str, Any]]  # weight file -> FrechetInceptionDistance keyword arguments

    def card(self, path: Path) -> str:
        return (f"FID protocol '{self.name}' ({self.library}): {self.preprocessing}; Inception weights {path.name} "
                f"(sha256 {sha256_prefix(path)}...); used by {self.used_by}")


PROTOCOLS: dict[str, FIDProtocol] = {p.name: p for p in [
    FIDProtocol("torchmetrics", "torchmetrics FrechetInceptionDistance defaults", "inception",
                "uint8 images resized to 299 x 299 by torch's bilinear filter with antialias, (x - 128) / 128, "
                "torch-fidelity's inception-v3-compat pool features (no published FID resizes this way: compare "
                "only with rFIDs computed the same way, on the same images, at the same count)",
                "latentae's earlier reports", _torchmetrics(antialias=True)),
    FIDProtocol("torch-fidelity", "torch-fidelity", "inception",
                "uint8 images resized to 299 x 299 by torch-fidelity's TensorFlow-1-compatible bilinear resize (no "
                "antialias), (x - 128) / 128, inception-v3-compat pool features",
                "RAE, 1d-tokenizer (TiTok); the closest here to ADM's TensorFlow evaluator (GigaTok, LlamaGen), "
                "which it ports, not verified", _torchmetrics(antialias=False)),
    FIDProtocol("pytorch-fid", "pytorch-fid", "pt-inception",
                "uint8 images / 255 (float32), bilinear resize to 299 x 299 (align_corners=False, no antialias), "
                "2x - 1, pytorch-fid's FID InceptionV3 pool features",
                "LightningDiT (tools/calculate_fid.py), FlowMo", lambda path: {"feature": PytorchFIDFeatures(path)}),
    FIDProtocol("clean-fid", "clean-fid, mode 'clean'", "clean-inception",
                "each channel resized as a float32 PIL image, bicubic to 299 x 299, clipped to [0, 255] (not "
                "quantized), (x - 128) / 128, StyleGAN2-ADA's TorchScript Inception pool features",
                "papers citing clean-fid", lambda path: {"feature": CleanFIDFeatures(path)}),
]}
DEFAULT_PROTOCOL = DEFAULT_FID_PROTOCOL
assert tuple(PROTOCOLS) == FID_PROTOCOLS, "latentae.options.FID_PROTOCOLS lists the CLI's choices"
