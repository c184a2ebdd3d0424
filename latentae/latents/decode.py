"""`latentae decode`: latent or token shards (what `latentae encode` wrote) back to images.

KL latents stored as mean + logvar ([2C, h, w]) decode their mean; stored means or samples ([C, h, w])
decode as they are; a structured latent's first n channels (encode --channels n, in each sample's .json) decode
with the rest zero, as the model decodes that count. Token ids go through the tokenizer's codebook (`detokenize`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from latentae.data.skips import SkipCounter
from latentae.data.transforms import to_pil
from latentae.errors import LatentaeError
from latentae.latents.format import iter_encoded
from latentae.models.bottleneck import at_channels
from latentae.runtime import Runtime


def _latent_input(model, sample: dict, spec: str) -> np.ndarray:
    """The latents the decoder takes: a mean + logvar stack's mean; a structured latent's first n channels as
    encode --channels n recorded them (the decoder reads the others as zeros)."""
    array, key, n = sample["latents"], sample["key"], sample["meta"].get("channels")
    if n is not None:
        at_channels(model, n, "the decoding model", what=f"{spec}: sample {key!r} holds the first {n} latent "
                    f"channels (encode --channels {n})")
    c = n or int(model.config["latent_channels"])
    if array.ndim != 3 or array.shape[0] not in (c, 2 * c):
        raise LatentaeError(f"sample {key!r}: latents of shape {list(array.shape)} do not fit this model "
                            f"({c} latent channels: expected [{c}, h, w] or [{2 * c}, h, w] mean + logvar)")
    return array[:c]


def decode_encoded(model, spec: str, *, batch_size: int = 8, precision: str = "fp32", channels_last: bool = False,
                   device: str | torch.device | None = None,
                   skipped: SkipCounter | None = None) -> Iterator[dict]:
    """Decoded samples of encode output `spec`, in stored order: `{"key", "shard", "image": float32 CPU
    tensor [3, H, W] in [-1, 1] (unclamped)}`."""
    if batch_size < 1:
        raise LatentaeError(f"batch_size must be >= 1, got {batch_size}")
    runtime = Runtime(model, device=device, precision=precision, channels_last=channels_last)
    field = "tokens" if model.bottleneck.tokenizes else "latents"
    pending: list[dict] = []

    def flush():
        with torch.inference_mode(), runtime.context():
            if field == "tokens":
                tokens = torch.from_numpy(np.stack([p["tokens"] for p in pending])).long().to(runtime.device)
                images = model.detokenize(tokens)
            else:
                images = model.decode(runtime.inputs(np.stack([p["latents"] for p in pending]).astype(np.float32)))
        for p, image in zip(pending, images.float().cpu()):
            yield {"key": p["key"], "shard": p["shard"], "image": image.contiguous()}
        pending.clear()

    for sample in iter_encoded(spec, skipped):
        if field not in sample:
            have = "token ids" if "tokens" in sample else "latents"
            raise LatentaeError(f"{spec} holds {have}, but the model is a {type(model).__name__}: decode with the "
                                "model that encoded them")
        if field == "latents":
            sample["latents"] = _latent_input(model, sample, spec)
        if pending and sample[field].shape != pending[0][field].shape:
            yield from flush()
        pending.append(sample)
        if len(pending) == batch_size:
            yield from flush()
    if pending:
        yield from flush()


def _safe_relpath(key: str) -> str:
    """A key as a path inside the output folder (keys come from tar member names: no '..' or '/' escapes)."""
    return "/".join(p for p in key.replace("\\", "/").split("/") if p not in ("", ".", "..")) or "_"


def save_decoded(model, spec: str, output: str | Path, *, progress: bool = False, **options) -> tuple[int, SkipCounter]:
    """Decode `spec` to PNG files `<output>/<shard>/<key>.png`; returns (images written, skipped samples).
    `options` go to `decode_encoded`."""
    from tqdm import tqdm

    output = Path(output)
    skipped = SkipCounter()
    written = 0
    for sample in tqdm(decode_encoded(model, spec, skipped=skipped, **options), unit="img", disable=not progress):
        path = output / sample["shard"] / f"{_safe_relpath(sample['key'])}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        to_pil(sample["image"]).save(path)
        written += 1
    if not written:
        raise LatentaeError(f"{spec} holds no samples to decode (skipped: {skipped})")
    return written, skipped
