"""Writing webdataset shards from image folders (recursive), image files and existing tars.

Each sample is `<key>.<ext>` (the original bytes, or a re-encoded copy when `max_side` shrinks the image) and
`<key>.json` = {"source": where the image came from, "width": .., "height": ..} (the size the reader will
deliver: after EXIF orientation and any downsizing). Keys come from relative paths, so they are stable
across runs; tar members get `<tar name>/<member key>`. Every image is fully decoded before it is written,
so files a reader would skip are reported here instead. Shards are written as `<name>.tar.tmp` and renamed
when complete: an interrupted run never leaves a truncated `.tar` behind.
"""
from __future__ import annotations

import functools
import io
import json
import multiprocessing
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from latentae.data.decode import open_image, pick_image, to_rgb
from latentae.data.folder import extension, is_image_file, is_tar_file, list_folder, sample_key
from latentae.data.skips import SkipSample
from latentae.data.sources import tar_index
from latentae.errors import LatentaeError

TAR_BLOCK = 512
MAX_LISTED = 50  # skipped files printed in the summary; the rest go to <output>/skipped.txt


class _Item(NamedTuple):
    key: str
    where: str    # reported in the summary and stored as json "source"
    path: str     # file holding the bytes
    offset: int   # -1: the whole file; else the data offset of a tar member
    size: int
    ext: str


@dataclass
class ShardReport:
    output: Path
    prefix: str
    shards: list[str] = field(default_factory=list)        # file names, in order
    samples: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (where, reason, detail)
    ignored: Counter = field(default_factory=Counter)       # non-image files met in folders, by extension

    def pattern(self) -> str:
        """Brace pattern naming every shard written (what `data.train` takes)."""
        if not self.shards:
            return ""
        last = len(self.shards) - 1
        return str(self.output / f"{self.prefix}-{{{0:05d}..{last:05d}}}.tar")

    def lines(self, max_listed: int = MAX_LISTED) -> list[str]:
        n = len(self.shards)
        out = [f"wrote {self.samples} samples in {n} shard{'s' * (n != 1)} ({self.bytes / 1e6:.1f} MB)"
               + (f": {self.pattern()}" if n else "")]
        if self.skipped:
            out.append(f"skipped {len(self.skipped)} file{'s' * (len(self.skipped) != 1)}:")
            out += [f"  {where}: {reason}" + (f" ({detail})" if detail else "")
                    for where, reason, detail in self.skipped[:max_listed]]
            if len(self.skipped) > max_listed:
                out.append(f"  ... and {len(self.skipped) - max_listed} more, listed in "
                           f"{self.output / 'skipped.txt'}")
        if self.ignored:
            kinds = ", ".join(f".{ext or '(none)'}: {n}" for ext, n in sorted(self.ignored.items()))
            out.append(f"ignored {sum(self.ignored.values())} non-image files in folders ({kinds})")
        return out


def _tar_items(path: str, name: str, report: ShardReport) -> list[_Item]:
    if not path.lower().endswith(".tar"):  # members are read by offset, which compression rules out
        report.skipped.append((path, "read_error", "compressed tar: decompress it to re-pack its images"))
        return []
    index, error = tar_index(path)
    if error:
        report.skipped.append((path, "read_error", error))
    items = []
    for key, members in index:
        exts = {ext: (offset, size) for ext, offset, size in members}
        try:
            ext, (offset, size) = pick_image(exts)
        except SkipSample as e:
            report.skipped.append((f"{path}:{key}", e.reason, e.detail))
            continue
        items.append(_Item(f"{name}/{key}", f"{path}:{key}.{ext}", path, offset, size, ext))
    return items


def collect_items(sources: Sequence[str], report: ShardReport) -> list[_Item]:
    """Every image to write, in a deterministic order (sources as given, folders sorted), unique keys."""
    items: list[_Item] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found, other = list_folder(p)
            report.ignored.update(extension(rel) for rel in other)
            name = p.resolve().name
            for rel in found:
                full = str(p / rel)
                key = sample_key(f"{name}/{rel}")
                if is_tar_file(rel):
                    items += _tar_items(full, key, report)
                else:
                    items.append(_Item(key, full, full, -1, -1, extension(rel)))
        elif not p.exists():
            raise LatentaeError(f"source not found: {src}")
        elif is_tar_file(src):
            items += _tar_items(src, sample_key(p.name), report)
        elif is_image_file(src):
            items.append(_Item(sample_key(p.name), src, src, -1, -1, extension(src)))
        else:
            raise LatentaeError(f"{src} is not an image folder, an image or a tar file")
    seen: set[str] = set()
    unique = []
    for item in items:  # the same relative path under two sources: number the later ones
        key, n = item.key, 1
        while key in seen:
            n += 1
            key = f"{item.key}_{n}"
        seen.add(key)
        unique.append(item._replace(key=key))
    return unique


def _reencode(img: Image.Image, ext: str, max_side: int) -> tuple[bytes, str, Image.Image]:
    """Shrink so the longer side is max_side. JPEGs stay JPEG (quality 95); the rest become PNG (lossless,
    alpha kept); modes neither can hold (CMYK, 16-bit, float) become 8-bit RGB first."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = to_rgb(img)
    scale = max_side / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if ext in ("jpg", "jpeg") and img.mode in ("RGB", "L"):
        img.save(buf, "JPEG", quality=95)
        return buf.getvalue(), "jpg", img
    img.save(buf, "PNG")
    return buf.getvalue(), "png", img


def _process(item: _Item, *, max_side: int | None, max_pixels: int):
    """Read, verify (full decode) and maybe shrink one image: ("ok", key, ext, data, json) or ("skip", ...)."""
    try:
        with open(item.path, "rb") as f:
            if item.offset >= 0:
                f.seek(item.offset)
                data = f.read(item.size)
                if len(data) != item.size:
                    return "skip", item.where, "read_error", "member data cut short"
            else:
                data = f.read()
    except OSError as e:
        return "skip", item.where, "read_error", str(e)
    try:
        img = open_image(data, max_pixels=max_pixels)
    except SkipSample as e:
        return "skip", item.where, e.reason, e.detail
    ext = item.ext
    if max_side and max(img.size) > max_side:
        data, ext, img = _reencode(img, ext, max_side)
    meta = json.dumps({"source": item.where, "width": img.width, "height": img.height}, sort_keys=True)
    return "ok", item.key, ext, data, meta


class _Shard:
    """One shard being written under a temporary name."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(final.name + ".tmp")
        self.writer = TarWriter(str(self.tmp), encoder=False, mtime=0, format="PAX_FORMAT")  # reproducible
        self.count = 0
        self.bytes = 0

    def write(self, sample: dict, size: int) -> None:
        self.writer.write(sample)
        self.count += 1
        self.bytes += size

    def commit(self) -> int:
        self.writer.close()
        os.replace(self.tmp, self.final)
        return self.final.stat().st_size

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _member_size(n: int) -> int:
    return TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK


def write_shards(sources: Sequence[str], output: str | Path, *, samples_per_shard: int = 1000,
                 bytes_per_shard: int = 1_000_000_000, shuffle_seed: int | None = None,
                 max_side: int | None = None, max_pixels: int, prefix: str = "data", workers: int = 0,
                 overwrite: bool = False, progress: bool = True) -> ShardReport:
    """Write `<output>/<prefix>-NNNNN.tar` shards; returns what was written and skipped.

    shuffle_seed: shuffle samples across shards with this seed (None keeps source order).
    workers: processes that read and verify images (0: in this process); the output does not depend on it.
    """
    if samples_per_shard < 1 or bytes_per_shard < 1:
        raise LatentaeError("samples per shard and bytes per shard must be >= 1")
    output = Path(output)
    report = ShardReport(output=output, prefix=prefix)
    items = collect_items(sources, report)
    if not items and not report.skipped:
        raise LatentaeError(f"no images found in {', '.join(map(str, sources))}")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)

    output.mkdir(parents=True, exist_ok=True)
    existing = sorted(output.glob(f"{prefix}-*.tar"))
    if existing and not overwrite:
        raise LatentaeError(f"{output} already holds {len(existing)} '{prefix}-*.tar' shards; "
                            "choose another folder or prefix, or pass --overwrite")
    for stale in existing + sorted(output.glob(f"{prefix}-*.tar.tmp")):  # .tmp: left by a killed run
        stale.unlink()

    work = functools.partial(_process, max_side=max_side, max_pixels=max_pixels)
    pool = multiprocessing.Pool(workers) if workers > 0 else None
    results = pool.imap(work, items, chunksize=8) if pool else map(work, items)
    shard: _Shard | None = None
    try:
        for result in tqdm(results, total=len(items), unit="img", desc="shards", disable=not progress):
            if result[0] == "skip":
                report.skipped.append(result[1:])
                continue
            _, key, ext, data, meta = result
            meta = meta.encode()
            size = _member_size(len(data)) + _member_size(len(meta))
            if shard is not None and (shard.count >= samples_per_shard or shard.bytes + size > bytes_per_shard):
                report.bytes += shard.commit()
                shard = None
            if shard is None:
                name = f"{prefix}-{len(report.shards):05d}.tar"
                shard = _Shard(output / name)
                report.shards.append(name)
            shard.write({"__key__": key, ext: data, "json": meta}, size)
            report.samples += 1
        if shard is not None:
            report.bytes += shard.commit()
            shard = None
    finally:
        if shard is not None:  # interrupted: no partial shard under a final name
            shard.abort()
            report.shards.pop()
        if pool is not None:
            pool.terminate()  # every result is consumed by now, or the run is being abandoned
    if len(report.skipped) > MAX_LISTED:
        (output / "skipped.txt").write_text("".join(f"{w}\t{r}\t{d}\n" for w, r, d in report.skipped))
    return report
