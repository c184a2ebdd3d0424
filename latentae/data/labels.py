"""Image classes of an evaluation set, and its class-balanced subsets (ImageNet-val style data).

A class comes from one of three places (`latentae eval --labels`):

  folders  the image's folder relative to the data folder: `val/n01440764/ILSVRC2012_val_00000293.JPEG` is class
           `n01440764` (its sample key without the last part; a tar member's key likewise)
  cls      the shards' `cls` member (webdataset's class convention), read as text
  FILE     a labels file of `filename label` lines (the form of Caffe's / many repos' ImageNet `val.txt`): the image's
           file name, with or without its extension, then whitespace, then the label (any text without spaces);
           blank lines and lines starting with # are skipped. An image matches by its sample key's last part
           (`ILSVRC2012_val_00000001` for `ILSVRC2012_val_00000001.JPEG`, in a folder or a shard)

`catalog` lists every sample of the data with its class before any image is decoded (local tars: their header
index and the small `cls` members only), so a missing label is one error up front. `per_class` keeps the first N
images of each class in the data's order (sources in order, folders sorted by path, each tar in stored order):
deterministic, no seed; a class with fewer than N images is an error naming it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from latentae.data.folder import sample_key
from latentae.data.skips import SkipCounter
from latentae.data.sources import Source, _is_local_tar, iter_samples, tar_index
from latentae.errors import LatentaeError

FOLDERS, CLS = "folders", "cls"
CLS_MEMBER = "cls"

Position = tuple[int, int]  # (source index, sample index in the source): the eval stream's position


@dataclass
class Catalog:
    """Every sample's key and class, in the data's order."""

    classes: dict[Position, str]  # position -> class
    keys: dict[Position, str]  # position -> sample key

    def counts(self) -> Counter:
        return Counter(self.classes.values())


def read_labels_file(path: str | Path) -> dict[str, str]:
    """`filename label` lines -> {file name without extension, dots as in sample keys: label}."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise LatentaeError(f"cannot read the labels file {path}: {e}") from None
    labels: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LatentaeError(f"{path}:{number}: expected `filename label`, got {line!r}")
        name, label = parts
        stem = name.rsplit(".", 1)[0] if "." in name else name
        labels[sample_key(Path(stem).name)] = label
    if not labels:
        raise LatentaeError(f"the labels file {path} holds no `filename label` lines")
    return labels


def _cls_members(source: Source, index: int) -> list[tuple[int, str, bytes | None]]:
    """(sample index, key, cls member bytes or None) of a tar, reading only the cls members of a local one."""
    if _is_local_tar(source.url):
        out = []
        entries, _ = tar_index(source.url)
        with open(source.url, "rb") as f:
            for ordinal, (key, members) in enumerate(entries):
                found = next(((offset, size) for ext, offset, size in members if ext == CLS_MEMBER), None)
                data = None
                if found is not None:
                    f.seek(found[0])
                    data = f.read(found[1])
                out.append((ordinal, key, data))
        return out
    return [(ordinal, s["__key__"], s.get(CLS_MEMBER)) for ordinal, s in enumerate(iter_samples(source, SkipCounter()))]


def catalog(sources: Sequence[Source], labels: str) -> Catalog:
    """Every sample of `sources` with its class under `labels` (FOLDERS, CLS or a labels file's path); samples without
    a class raise one LatentaeError counting them and naming the first."""
    table = None if labels in (FOLDERS, CLS) else read_labels_file(labels)
    classes: dict[Position, str] = {}
    keys: dict[Position, str] = {}
    missing: list[str] = []
    for index, source in enumerate(sources):
        if source.is_image:
            if labels == CLS:
                raise LatentaeError(f"--labels cls reads the shards' cls member; {source.url} is an image file, "
                                    "which has none: use --labels folders or a labels file")
            entries = [(0, source.key, None)]
        else:
            entries = _cls_members(source, index)
        for ordinal, key, member in entries:
            if labels == CLS:
                label = member.decode("utf-8", "replace").strip() if member else ""
            elif labels == FOLDERS:
                label = key.rsplit("/", 1)[0] if "/" in key else ""
            else:
                label = table.get(key.rsplit("/", 1)[-1], "")
            if not label:
                missing.append(f"{source.url}:{key}" if not source.is_image else source.url)
            keys[(index, ordinal)] = key
            classes[(index, ordinal)] = label
    if missing:
        where = {FOLDERS: "is not inside a class folder", CLS: "has no cls member"}.get(
            labels, f"has no line in the labels file {labels}")
        raise LatentaeError(f"{len(missing)} image(s) without a class: {missing[0]} {where}")
    return Catalog(classes, keys)


def per_class(found: Catalog, n: int) -> tuple[Catalog, dict[int, frozenset[int]]]:
    """The first `n` samples of each class in the data's order: the smaller catalog and the kept sample indices per
    source index. A class with fewer than n samples raises LatentaeError naming the smallest ones."""
    counts = found.counts()
    short = sorted((c, k) for k, c in counts.items() if c < n)
    if short:
        listed = ", ".join(f"{k} ({c})" for c, k in short[:5])
        raise LatentaeError(f"--per-class {n}: {len(short)} of {len(counts)} classes have fewer images: {listed}"
                            f"{' ...' if len(short) > 5 else ''}")
    taken: Counter = Counter()
    kept: dict[Position, str] = {}
    for position in sorted(found.classes):
        label = found.classes[position]
        if taken[label] < n:
            taken[label] += 1
            kept[position] = label
    keep: dict[int, set[int]] = {}
    for index, ordinal in kept:
        keep.setdefault(index, set()).add(ordinal)
    return (Catalog(kept, {p: found.keys[p] for p in kept}),
            {index: frozenset(ordinals) for index, ordinals in keep.items()})
