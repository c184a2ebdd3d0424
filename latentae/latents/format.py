"""On-disk format of an encoded dataset: what `latentae encode` writes and `decode` / `stats` read.

The output folder holds one webdataset shard per input shard, `<name>.tar`, a record of that shard's
counts `<name>.json`, and `manifest.json` (written when every shard is done). Each sample in a shard:

    <key>.latents.npy   float32 (or float16) array: [2C, h, w] posterior mean and logvar stacked on the channel
                        axis (the `moments` layout of diffusers' DiagonalGaussianDistribution; store "both"),
                        or [C, h, w] for store "mean" / "sample"; KL models
    <key>.tokens.npy    int32 token ids [h, w] ([h, w, S] for residual quantizers, [h, w, 2] (top, bottom) for vqvae2); VQ tokenizers
    <key>.json          {"key": source key, "url": source shard or file, "shard": input shard name}
    <key>.<ext>         the source sample's other non-image members (captions .txt, .cls, ...) copied
                        verbatim, its .json as .source.json

`<key>` is the source sample's key. h and w are the image's (cropped) size over the downsampling factor: at
native size (encode's default) they differ from sample to sample, and a shard holds its samples grouped by
size; readers batch only equal shapes. Latents are unscaled (multiply by `scaling_factor`, see `latentae stats`).
Arrays are plain `.npy` members: numpy reads them without pickle.
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from latentae.data.folder import is_image_file
from latentae.data.skips import SkipCounter
from latentae.data.sources import expand_urls, iter_samples, source_for
from latentae.errors import LatentaeError

LATENTS = "latents.npy"
TOKENS = "tokens.npy"
META = "json"
SOURCE_META = "source.json"  # the source sample's own .json
MANIFEST = "manifest.json"
FORMAT = "latentae.latents/1"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def shard_name(url: str) -> str:
    """Output name for an input shard: its file name without the tar suffix ('pipe:curl -s http://h/a-01.tar'
    -> 'a-01'); the output folder gets `<name>.tar`."""
    last = url.split()[-1] if url.startswith("pipe:") else url
    base = re.split(r"[/\\]", last.rstrip("/"))[-1].split("?")[0]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def write_json(path: Path, obj) -> None:
    """Atomic: a reader (or a killed run) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(folder: str | Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def iter_encoded(spec: str, skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Samples of `latentae encode` output (a folder, shard pattern or tar) in stored order:
    `{"key", "shard", "latents" or "tokens": np.ndarray, "meta": dict}`. Unreadable members are counted in
    `skipped` (read_error); a tar that is not encode output raises LatentaeError."""
    skipped = skipped if skipped is not None else SkipCounter()
    urls = [u for u in expand_urls(spec) if not is_image_file(u)]  # a folder's stray images are not latents
    if not urls:
        raise LatentaeError(f"{spec} holds no latent shards (.tar): pass the --output folder of latentae encode")
    for url in urls:
        for sample in iter_samples(source_for(url), skipped):
            kind = LATENTS if LATENTS in sample else TOKENS if TOKENS in sample else None
            if kind is None:
                members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
                raise LatentaeError(f"{url} is not latentae encode output: sample {sample['__key__']!r} has "
                                    f"{members or 'no members'}, no {LATENTS} or {TOKENS}")
            try:
                array = load_npy(sample[kind])
                meta = json.loads(sample[META]) if META in sample else {}
            except (ValueError, OSError) as e:
                skipped.add("read_error", f"{url}:{sample['__key__']}", str(e))
                continue
            yield {"key": sample["__key__"], "shard": shard_name(url), kind.split(".")[0]: array, "meta": meta}
