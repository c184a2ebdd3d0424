"""Every pretrained weight file latentae may need, and where each one is found.

`resolve(name)` looks, in order, at an explicitly configured path, at torch's hub cache
(`torch.hub.get_dir()/checkpoints`, i.e. `$TORCH_HOME/hub/checkpoints`, the directory torchvision and
torch-fidelity download into), then tries one download with a short timeout. When all of that fails it raises
MissingWeightsError with a single message saying which file, where to put it, where to get it, and what to do
without it. `latentae fetch-weights` downloads everything ahead of time for clusters whose compute nodes are
offline.

The LPIPS linear heads ship inside the `lpips` package, so they are only checked, never downloaded.

Hugging Face models (`HUB_MODELS`: DINOv2 for the VF alignment loss and FD-DINOv2, CLIP ViT-L/14@336px for
CMMD) live in the Hugging Face cache instead (`$HF_HOME/hub`, or `HF_HUB_CACHE`), or in a local directory the
config or option names. `resolve_hub_model` looks in the cache first and downloads only when that fails and
`HF_HUB_OFFLINE` is not set; `latentae fetch-weights` fetches them only when asked by name (`--only dinov2`:
1.2 GB, `--only clip`: 1.7 GB).
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from latentae.errors import LatentaeError, MissingWeightsError, ModelFormatError

DOWNLOAD_TIMEOUT_S = 20  # per connect / read: fail fast on an offline node instead of hanging
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightFile:
    name: str  # registry key (`latentae fetch-weights --only NAME`)
    filename: str  # file name inside the checkpoints directory (torchvision's / torch-fidelity's own)
    url: str | None  # None: the file ships inside a Python package (`package_path`)
    used_for: str  # what needs it, and how to run without it (goes into the error message)
    sha256_prefix: str | None = None  # torchvision names its files after their sha256's first 8 hex digits
    package_path: tuple[str, str] | None = None  # (package, path inside it) for files shipped in a package


_LPIPS_HINT = "LPIPS (set loss.perceptual_weight=0 to train without it)"

REGISTRY: dict[str, WeightFile] = {w.name: w for w in [
    WeightFile("vgg16", "vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
               f"the VGG16 trunk of {_LPIPS_HINT}", sha256_prefix="397923af"),
    WeightFile("alexnet", "alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
               "the AlexNet trunk of LPIPS-alex (loss with loss.perceptual_net=alex, and the LPIPS metric; set "
               "loss.perceptual_weight=0 to train without it)", sha256_prefix="7be5be79"),
    WeightFile("lpips-vgg", "vgg.pth", None, f"the linear heads of {_LPIPS_HINT}",
               package_path=("lpips", "weights/v0.1/vgg.pth")),
    WeightFile("lpips-alex", "alex.pth", None, "the linear heads of the LPIPS-alex metric and loss",
               package_path=("lpips", "weights/v0.1/alex.pth")),
    WeightFile("inception", "weights-inception-2015-12-05-6726825d.pth",
               "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
               "weights-inception-2015-12-05-6726825d.pth",
               "the Inception network of FID (evaluation only)"),
    WeightFile("pt-inception", "pt_inception-2015-12-05-6726825d.pth",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth",
               "the Inception network of `latentae eval --fid-protocol pytorch-fid` (pytorch-fid's own file and "
               "cache location; the other protocols run without it)"),
    WeightFile("clean-inception", "inception-2015-12-05.pt",
               "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
               "the TorchScript Inception of `latentae eval --fid-protocol clean-fid` (clean-fid keeps it in /tmp; "
               "latentae looks here; the other protocols run without it)"),
]}


def checkpoints_dir() -> Path:
    """Where torchvision and torch-fidelity download to: `$TORCH_HOME/hub/checkpoints`."""
    import torch  # here, not at import: `latentae --help` stays fast

    return Path(torch.hub.get_dir()) / "checkpoints"


def entry(name: str) -> WeightFile:
    if name not in REGISTRY:
        raise LatentaeError(f"unknown weight file '{name}'; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _package_file(w: WeightFile) -> Path:
    import importlib.util

    package, inner = w.package_path
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"{w.filename} ({w.used_for}) ships with the '{package}' package, which is "
                                  f"not installed: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.is_file():
        raise MissingWeightsError(f"{w.filename} ({w.used_for}) is missing from the '{package}' package at "
                                  f"{path}: reinstall it (pip install --force-reinstall {package})")
    return path


def _download(url: str, dest: Path, *, sha256_prefix: str | None, progress: bool) -> None:
    """Download to a temporary file beside `dest`, check the hash, then rename (no half-written `dest`)."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.partial")
    sha = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "latentae"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    sha.update(chunk)
                    bar.update(len(chunk))
        if sha256_prefix and not sha.hexdigest().startswith(sha256_prefix):
            raise OSError(f"sha256 {sha.hexdigest()[:8]}... does not start with {sha256_prefix} (corrupt download)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _missing(w: WeightFile, directory: Path, reason: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"pretrained weights '{w.filename}' not found and could not be downloaded ({reason}). They are needed "
        f"for {w.used_for}. Put the file in {directory}/ (download it from {w.url}), or run "
        f"`latentae fetch-weights --only {w.name}` on a machine with internet access and copy it there.")


def resolve(
    name: str,  # a REGISTRY key: vgg16, alexnet, lpips-vgg, lpips-alex, inception, pt-inception, clean-inception
    local_path: str | Path | None = None,  # explicitly configured file; must exist when given
    *,
    directory: str | Path | None = None,  # where to look / download (default: torch hub checkpoints dir)
    download: bool = True,  # False: only look, never touch the network
    progress: bool = True,  # progress bar while downloading (stderr)
) -> Path:
    """Path of the weight file `name`; raises MissingWeightsError (one message) when it cannot be had."""
    w = entry(name)
    if local_path is not None:
        path = Path(local_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"configured weight file for {w.used_for} does not exist: {path} "
                                      f"(expected a copy of {w.filename})")
        return path
    if w.package_path is not None:
        return _package_file(w)
    directory = Path(directory).expanduser() if directory is not None else checkpoints_dir()
    path = directory / w.filename
    if path.is_file():
        return path
    if not download:
        raise _missing(w, directory, "downloads disabled")
    try:
        _download(w.url, path, sha256_prefix=w.sha256_prefix, progress=progress)
    except (OSError, ValueError) as e:  # URLError, timeouts, refused connections and hash mismatches are OSErrors
        raise _missing(w, directory, f"{type(e).__name__}: {e}") from None
    return path


def fetch_all(
    names: list[str] | None = None,  # default: every registry entry
    *,
    directory: str | Path | None = None,
    report: Callable[[str], None] = print,
) -> list[str]:
    """Resolve (downloading where needed) each file; report one line per file. Returns the names that failed.
    Hugging Face models (HUB_MODELS) only when named; with `directory` they go to DIRECTORY/<model name>."""
    failed = []
    for name in names or list(REGISTRY):
        try:
            if name in HUB_MODELS:
                m = HUB_MODELS[name]
                target = Path(directory).expanduser() / m.repo_id.split("/")[-1] if directory is not None else None
                path = resolve_hub_model(name, directory=target)
                size = sum((path / f).stat().st_size for names in m.needed for f in names if (path / f).is_file())
                where = f"set {m.config_key}={path}" if target is not None else "Hugging Face cache"
            else:
                w = entry(name)
                path = resolve(name, directory=directory)
                size = path.stat().st_size
                where = f"ships with {w.package_path[0]}" if w.package_path else "cached"
        except MissingWeightsError as e:
            failed.append(name)
            report(f"FAILED {name}: {e}")
            continue
        report(f"ok     {name}: {path} ({size / 2**20:.2f} MiB, {where})")
    return failed


@dataclass(frozen=True)
class HubModel:
    name: str  # `latentae fetch-weights --only NAME`
    repo_id: str  # the default Hugging Face model id
    used_for: str  # what needs it, and how to run without it
    config_key: str  # the config key or option that names the model (a hub id or a local directory)
    # from_pretrained needs config.json and one weight file: safetensors first, else the pytorch_model.bin older
    # repositories hold (transformers reads it with torch.load(weights_only=True)); which one a repository has
    # cannot be checked offline, so either is accepted
    weights: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")

    @property
    def needed(self) -> tuple[tuple[str, ...], ...]:
        """Each file from_pretrained needs, as its accepted names in order of preference."""
        return ("config.json",), self.weights

    def describe(self) -> str:
        return ", ".join(" or ".join(names) for names in self.needed)


HUB_MODELS: dict[str, HubModel] = {m.name: m for m in [
    HubModel("dinov2", "facebook/dinov2-large",
             "the VF alignment loss (set loss.vf.weight=0 to train without it) and FD-DINOv2 in `latentae eval` and "
             "the probe (reported unavailable without it)", "loss.vf.model"),
    HubModel("dino-vits8", "facebook/dino-vits8",
             "the frozen DINO ViT-S/8 of the RAE authors' discriminator, loss.disc.kind=dino (set "
             "loss.disc.kind=patchgan to train without it)", "loss.disc.weights"),
    HubModel("clip", "openai/clip-vit-large-patch14-336",
             "CMMD in `latentae eval --metrics ...,cmmd` (reported unavailable without it)", "--cmmd-model"),
    # a fresh RAE's frozen encoder (the authors' encoders; model.encoder_weights: random for a smoke run)
    *(HubModel(f"rae-{kind}", repo,
               f"a fresh RAE's frozen {kind} encoder (model.family rae, model.diffusers.encoder_type {kind}; "
               "model.encoder_weights: random trains on a random-init one, for smoke runs only)",
               "model.encoder_weights")
      for kind, repo in (("dinov2", "facebook/dinov2-with-registers-base"),
                         ("siglip2", "google/siglip2-base-patch16-256"), ("mae", "facebook/vit-mae-base"))),
]}


def hf_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as set since."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else names a local directory."""
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def resolve_hub_model(
    name: str,  # a HUB_MODELS key
    source: str | None = None,  # a local directory or a hub id (default: the entry's repo_id)
    *,
    directory: str | Path | None = None,  # fetch into this plain directory instead of the Hugging Face cache
    download: bool = True,  # False: only look, never touch the network
) -> Path:
    """A local directory holding the model's files; raises MissingWeightsError (one line) when it cannot be had."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError  # a file the repository lacks (not an OSError in hub 2.x)

    m = HUB_MODELS[name]
    source = source or m.repo_id
    local = Path(source).expanduser()
    if local.is_dir() or _looks_like_path(source):
        missing = [names for names in m.needed if not any((local / f).is_file() for f in names)]
        if missing:
            what = f"missing {', '.join(' or '.join(n) for n in missing)} in" if local.is_dir() else \
                "no such directory:"
            raise MissingWeightsError(
                f"'{m.config_key}': {what} {local} (a directory with {m.describe()}, e.g. from "
                f"`latentae fetch-weights --only {name} --dir DIR`, is needed for {m.used_for})")
        return local
    where = {"local_dir": str(directory)} if directory is not None else {}

    def cached(names: tuple[str, ...]) -> str | None:
        for f in names:
            try:
                return hf_hub_download(source, f, local_files_only=True, **where)
            except (OSError, ValueError):  # ValueError: not a valid hub id
                continue
        return None

    missing = [names for names in m.needed if cached(names) is None]
    if missing:
        reason = "HF_HUB_OFFLINE is set" if hf_offline() else None if download else "downloads disabled"
        for names in missing if reason is None else []:
            for f in names:  # the first name the repository has
                try:
                    hf_hub_download(source, f, **where)
                    reason = None
                    break
                except (OSError, ValueError, EntryNotFoundError) as e:  # no network, unknown repo or file
                    reason = _first_line(e)
            if reason is not None:
                break
        if reason is not None:
            cache = directory if directory is not None else constants.HF_HUB_CACHE
            other = "" if source == m.repo_id else \
                f" (that fetches {m.repo_id}; for {source}: `hf download {source} config.json {m.weights[0]}`)"
            raise MissingWeightsError(
                f"{name} model '{source}' not found: {', '.join(' or '.join(n) for n in missing)} missing from the "
                f"Hugging Face cache {cache} and not downloaded ({reason}). It is needed for {m.used_for}. Run "
                f"`latentae fetch-weights --only {name}`{other} on a machine with internet access and copy the "
                f"cache here (or point HF_HUB_CACHE at a copy), or set {m.config_key} to a local directory with "
                f"{m.describe()}")
    return Path(cached(m.needed[0])).parent


def load_hub_model(name: str, source: str | None, model_class: str, model_type: str, **kwargs):
    """(transformers `model_class` loaded from `source`, its directory); `source` is a local directory or a hub id
    (default: HUB_MODELS[name]'s), whose config.json must declare `model_type`; `kwargs` go to from_pretrained."""
    import json

    import transformers  # ImportError: the caller says what is unavailable, with the reason

    directory = resolve_hub_model(name, source)
    found = json.loads((directory / "config.json").read_text()).get("model_type")
    if found != model_type:
        raise ModelFormatError(f"{HUB_MODELS[name].config_key}: {directory} holds a '{found}' model, not "
                               f"'{model_type}' (e.g. {HUB_MODELS[name].repo_id})")
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # unused weights (CLIP's text tower) are expected; missing ones refused below
    hf_logging.disable_progress_bar()
    try:
        model, info = getattr(transformers, model_class).from_pretrained(str(directory), local_files_only=True,
                                                                       output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()
    missing = sorted(info["missing_keys"])
    if missing:  # transformers would leave them random
        raise ModelFormatError(f"{HUB_MODELS[name].config_key}: {directory} lacks {len(missing)} weights of "
                               f"{model_class} ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return model, directory
