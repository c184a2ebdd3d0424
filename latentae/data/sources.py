"""Where samples come from: source specs -> a list of shards / image files -> raw samples.

A spec is a comma-separated list of: brace patterns (`data-{00000..00099}.tar`), globs, tar files, `pipe:`
commands and other URLs webdataset opens, image folders (recursive: their images and tars) and image files.
Raw samples are webdataset dicts: `{"__key__": str, "__url__": str, "<ext>": bytes, ...}`.

Local uncompressed tars are read by random access (a header index, then seeks): that lets a training stream
start a shard at any sample. Everything else (pipe:, http, .tar.gz) streams through webdataset's tar reader
from the first sample.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import braceexpand
from webdataset.tariterators import base_plus_ext, tarfile_samples

from latentae.data.folder import extension, is_image_file, is_tar_file, list_folder, sample_key
from latentae.data.skips import SkipCounter
from latentae.errors import LatentaeError

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped like it does


@dataclass(frozen=True)
class Source:
    """One unit of reading: a tar (path, URL or pipe: command), or one image file with its sample key."""

    url: str
    key: str | None = None  # set for image files, None for tars

    @property
    def is_image(self) -> bool:
        return self.key is not None


def _split_top_level(spec: str) -> list[str]:
    """Split on commas outside braces ('a-{0,1}.tar,b.tar' -> ['a-{0,1}.tar', 'b.tar'])."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _is_url(part: str) -> bool:
    return part.startswith("pipe:") or bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", part))


def _local_sources(path: str) -> list[Source]:
    if path.startswith("file://"):
        path = path[len("file://"):]
    p = Path(path)
    if p.is_dir():
        found, _ = list_folder(p)
        return [Source(str(p / rel), None if is_tar_file(rel) else sample_key(rel)) for rel in found]
    if not p.exists():
        raise LatentaeError(f"data source not found: {path}")
    if is_tar_file(path):
        return [Source(path)]
    if is_image_file(path):
        return [Source(path, sample_key(p.name))]
    raise LatentaeError(f"data source {path} is neither a tar file nor an image (.{extension(path) or '?'})")


def _parts(spec: str | Sequence[str]) -> list[str]:
    return _split_top_level(spec) if isinstance(spec, str) else [p for s in spec for p in _split_top_level(s)]


def _part_sources(part: str) -> list[Source]:
    """The sources one comma-separated part of a spec names, in order."""
    if _is_url(part) and not part.startswith("file://"):
        return [Source(u) for u in braceexpand.braceexpand(part)]
    out: list[Source] = []
    for path in braceexpand.braceexpand(os.path.expanduser(part)):
        if glob.has_magic(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise LatentaeError(f"data source pattern matches nothing: {path}")
            for m in matches:
                out.extend(_local_sources(m))
        else:
            out.extend(_local_sources(path))
    return out


def expand_source_groups(spec: str | Sequence[str]) -> list[list[Source]]:
    """Spec -> the sources of expand_sources, grouped into runs assumed to hold equal numbers of samples:
    per comma-separated part, its tars (a brace pattern, glob or folder of shards, as webdataset writers
    make them with a fixed count per shard) and its image files (one sample each). Nothing is read to
    check the assumption (stream sources cannot be counted without reading them)."""
    groups: list[list[Source]] = []
    for part in _parts(spec):
        found = _part_sources(part)
        groups += [g for g in ([s for s in found if not s.is_image], [s for s in found if s.is_image]) if g]
    if not groups:
        raise LatentaeError(f"data source {spec!r} holds no images or tar files")
    return groups


def expand_sources(spec: str | Sequence[str]) -> list[Source]:
    """Spec (string or list of strings) -> sources in a deterministic order (the order given, folders and
    globs sorted). Missing local paths raise LatentaeError; an empty result too."""
    out = [source for part in _parts(spec) for source in _part_sources(part)]
    if not out:
        raise LatentaeError(f"data source {spec!r} holds no images or tar files")
    return out


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Spec -> the list of tar paths / URLs / image files it names (see expand_sources)."""
    return [s.url for s in expand_sources(spec)]


def source_for(url: str) -> Source:
    """The Source for a single tar / URL / image file (as returned by expand_urls)."""
    if _is_url(url) and not url.startswith("file://"):
        return Source(url)
    if Path(url).is_dir():
        raise LatentaeError(f"{url} is a folder; expand it with expand_urls() and read its files")
    (source,) = _local_sources(url)
    return source


def _is_local_tar(url: str) -> bool:
    return not _is_url(url) and url.lower().endswith(".tar")


SampleIndex = tuple[str, tuple[tuple[str, int, int], ...]]  # key, ((ext, data offset, size), ...)


def tar_index(path: str) -> tuple[tuple[SampleIndex, ...], str | None]:
    """Samples of an uncompressed local tar as (key, ((ext, data_offset, size), ...)), grouped like webdataset
    groups consecutive members by key; plus an error message when the archive is truncated or unreadable
    (the samples before the damage are kept). Cached per process for the file's current size and mtime."""
    try:
        st = os.stat(path)
    except OSError as e:
        return (), f"{type(e).__name__}: {e}"
    return _tar_index(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _tar_index(path: str, end: int, mtime_ns: int) -> tuple[tuple[SampleIndex, ...], str | None]:
    # mtime_ns is part of the cache key only: a rewritten file gets a fresh index
    samples: list[tuple[str, list[tuple[str, int, int]]]] = []
    error = None
    try:
        with tarfile.open(path, mode="r:") as tf:  # header index only: member data is seeked over
            while True:
                info = tf.next()
                if info is None:
                    break
                tf.members.clear()  # keep memory flat on large shards
                if info.offset_data + info.size > end:
                    raise tarfile.ReadError(f"archive ends inside member {info.name}")
                if not info.isreg() or _META.match(info.name):
                    continue
                prefix, suffix = base_plus_ext(info.name)
                if prefix is None:
                    continue
                if not samples or samples[-1][0] != prefix:
                    samples.append((prefix, []))
                samples[-1][1].append((suffix.lower(), info.offset_data, info.size))
    except (OSError, tarfile.TarError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
    return tuple((k, tuple(m)) for k, m in samples), error


def _iter_local_tar(path: str, start: float, skipped: SkipCounter) -> Iterator[dict]:
    index, error = tar_index(path)
    if error:
        skipped.add("read_error", path, error)
    if not index:
        return
    first = int(start * len(index))
    with open(path, "rb") as f:
        for key, members in index[first:] + index[:first]:
            sample = {"__key__": key, "__url__": path}
            for ext, offset, size in members:
                f.seek(offset)
                data = f.read(size)
                if len(data) != size:
                    skipped.add("read_error", f"{path}:{key}.{ext}", "member data cut short")
                    break
                sample.setdefault(ext, data)
            else:
                yield sample


def _iter_stream(url: str, skipped: SkipCounter) -> Iterator[dict]:
    def handler(exn: Exception) -> bool:
        skipped.add("read_error", url, f"{type(exn).__name__}: {exn}")
        return False  # stop this stream: after a broken member the rest of a tar stream is unreadable too

    yield from tarfile_samples([{"url": url}], handler=handler)


def iter_samples(source: Source, skipped: SkipCounter, start: float = 0.0) -> Iterator[dict]:
    """Raw samples of one source in stored order. `start` in [0, 1) begins a local tar at that fraction of
    its samples and wraps around (other tars always begin at their first sample). A read failure (missing
    file, truncated or corrupt archive) is counted once in `skipped` as read_error and ends the source
    there, keeping the samples before it; nothing raises."""
    if source.is_image:
        try:
            with open(source.url, "rb") as f:
                data = f.read()
        except OSError as e:
            skipped.add("read_error", source.url, str(e))
            return
        yield {"__key__": source.key, "__url__": source.url, extension(source.url): data}
    elif _is_local_tar(source.url):
        yield from _iter_local_tar(source.url, start, skipped)
    else:
        yield from _iter_stream(source.url, skipped)
