"""Resumable evaluation: after each chunk of the data (a tar, or a run of image files: EvalLoader.chunks), every
process writes what it has accumulated so far, so a run killed at any point restarts after its last finished chunk
and reports what an uninterrupted run reports (the same chunks, batched the same way, summed in the same order).

One file per process, `rank{R}-of-{W}.pt`, replaced atomically after each chunk. Its size does not grow with the
image count beyond the per-image values: the accumulators are sums (FID / FD statistics, bottleneck counts), never
features or images. It holds a fingerprint of everything that decides the numbers (models' weights and classes,
metrics, feature extractors, precision, crop, data files, chunking, batching, process count): a file written under
another one is refused with the fields that differ.

Accumulators name the attributes that hold their state in `STATE` (dotted paths), read by `snapshot` and set back
by `restore`.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from latentae.errors import LatentaeError

FORMAT = "latentae-eval-resume-1"


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: str, value) -> None:
    *parents, name = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, name, value)


def snapshot(obj) -> dict:
    """The accumulator's state: its STATE attributes (none for a stateless one)."""
    return {path: _get(obj, path) for path in getattr(obj, "STATE", ())}


def restore(obj, state: dict) -> None:
    for path, value in state.items():
        _set(obj, path, value)


def module_sha256(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names and raw bytes): the same weights, the same digest."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Checkpoint:
    """This process's resume file in `folder`, for an evaluation whose `fingerprint` (str -> str) is given."""

    def __init__(self, folder: str | Path, rank: int, ranks: int, fingerprint: dict[str, str]):
        self.folder = Path(folder)
        self.path = self.folder / f"rank{rank}-of-{ranks}.pt"
        self.ranks = ranks
        self.fingerprint = {"format": FORMAT, **fingerprint, "processes": str(ranks)}

    def load(self, device: torch.device) -> dict | None:
        """The state an earlier run of the same evaluation saved, or None. A file of another evaluation (other models,
        metrics, protocol, data or process count) raises LatentaeError naming what differs."""
        mine = f"-of-{self.ranks}.pt"
        others = sorted(p.name for p in self.folder.glob("rank*-of-*.pt") if not p.name.endswith(mine))
        if others:
            raise LatentaeError(f"{self.folder} holds a partial evaluation by another number of processes "
                                f"({others[0]}); resume it with that many processes, or delete {self.folder} to start "
                                "over")
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 -- any failure means "not a resume file of ours"
            raise LatentaeError(f"cannot read the partial evaluation {self.path} ({type(e).__name__}: {e}); delete "
                                f"{self.folder} to start over") from None
        old = saved.get("fingerprint", {})
        differ = sorted(k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k))
        if differ:
            raise LatentaeError(f"{self.path} was written by another evaluation (different {', '.join(differ)}): "
                                f"use another --output, or delete {self.folder} to start over")
        return saved["state"]

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"fingerprint": self.fingerprint, "state": state}, tmp)
        os.replace(tmp, self.path)  # a run killed while writing leaves the previous file whole
