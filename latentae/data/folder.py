"""Plain image folders: recursive listing and the sample keys derived from relative paths.

A folder is read with the same transforms as shards: each image file is one sample (see sources.py), so
small datasets need no conversion.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from latentae.data.decode import IMAGE_EXTS

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def extension(path: str) -> str:
    """Lower-case extension without the dot ('' when none)."""
    return os.path.splitext(path)[1][1:].lower()


def is_image_file(path: str) -> bool:
    return extension(path) in IMAGE_EXTS


def is_tar_file(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def list_folder(root: str | Path) -> tuple[list[str], list[str]]:
    """Sorted relative paths (posix) of (images and tars, other files) under root; hidden entries skipped."""
    root = Path(root)
    found, other = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):  # .DS_Store, ._resource forks, editor files
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            (found if is_image_file(name) or is_tar_file(name) else other).append(rel)
    return sorted(found), sorted(other)


def sample_key(relpath: str) -> str:
    """Webdataset key for a file: its relative path without extension, dots in the name replaced.

    A webdataset key ends at the first dot of the member's base name, so 'a/img.v2.jpg' becomes 'a/img_v2'.
    Stable across runs: it depends only on the path.
    """
    relpath = relpath.replace("\\", "/")
    stem = relpath[: len(relpath) - len(extension(relpath)) - 1] if extension(relpath) else relpath
    parts = [re.sub(r"[.\s]", "_", p) for p in stem.split("/") if p not in ("", ".")]
    return "/".join(parts) or "_"
