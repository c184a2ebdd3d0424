"""Opening TAESD-family weights as their users keep them: a folder with `<name>_encoder.{safetensors,pth}` and / or
`<name>_decoder.{...}`, one such file, or a `folder/<name>` prefix where the folder holds several pairs (the
authors' repository). The variant and latent channels come from the tensors' shapes."""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from latentae.errors import ModelFormatError

HALVES = ("encoder", "decoder")
SUFFIXES = (".safetensors", ".pth", ".pt")


def _half_files(folder: Path, prefix: str | None = None) -> dict[tuple[str, str], Path]:
    """(name, half) -> file, for the `<name>_<half>.<suffix>` files in `folder` (safetensors preferred)."""
    found: dict[tuple[str, str], Path] = {}
    for suffix in reversed(SUFFIXES):  # the preferred suffix is written last
        for half in HALVES:
            for f in folder.glob(f"*_{half}{suffix}"):
                name = f.name[: -len(f"_{half}{suffix}")]
                if prefix is None or name == prefix:
                    found[(name, half)] = f
    return found


def find_taesd(path: Path) -> dict[str, Path] | None:
    """{half: file} when `path` names TAESD-format weights (a folder, a half file or a folder/<name> prefix), else
    None. Several pairs in one folder are an error naming them."""
    if path.is_file():
        return {_half_of(path): path} if path.suffix in SUFFIXES and _half_of(path) else None
    folder, prefix = (path, None) if path.is_dir() else (path.parent, path.name)
    if not folder.is_dir():
        return None
    files = _half_files(folder, prefix)
    names = sorted({name for name, _ in files})
    if len(names) > 1:
        raise ModelFormatError(f"{path} holds TAESD-format weights of {len(names)} models ({', '.join(names)}): pass "
                               f"one as {folder}/<name>, e.g. {folder / names[0]}")
    return {half: f for (_, half), f in files.items()} or None


def _half_of(path: Path) -> str | None:
    stem = path.name[: -len(path.suffix)]
    return next((h for h in HALVES if stem.endswith(f"_{h}")), None)


def infer_architecture(encoder: dict[str, Tensor] | None, decoder: dict[str, Tensor] | None) -> dict:
    """latent_channels and variant from the shapes: the encoder's first conv (64 wide, or 32 wide at stride 2 for
    f32), the decoder's first conv (64 out, or 256 for f32), the `pool` branch (flux_2)."""
    found = []
    if encoder is not None:
        stem, out = encoder.get("0.weight"), encoder.get(f"{_last_conv(encoder)}.weight")
        if stem is None or out is None or stem.ndim != 4 or stem.shape[1] != 3:
            raise ModelFormatError("the encoder file is not a TAESD encoder (no 3-channel first convolution "
                                   "'0.weight')")
        variant = "f32" if stem.shape[0] == 32 else "flux_2" if any(".pool." in k for k in encoder) else "taesd"
        found.append((int(out.shape[0]), variant))
    if decoder is not None:
        stem = decoder.get("1.weight")
        if stem is None or stem.ndim != 4 or "0.weight" in decoder:
            raise ModelFormatError("the decoder file is not a TAESD decoder (no latent convolution '1.weight' after "
                                   "the clamp)")
        variant = "f32" if stem.shape[0] == 256 else "flux_2" if any(".pool." in k for k in decoder) else "taesd"
        found.append((int(stem.shape[1]), variant))
    if len(set(found)) > 1:
        raise ModelFormatError(f"the encoder ({found[0][0]} latent channels, {found[0][1]}) and decoder "
                               f"({found[1][0]}, {found[1][1]}) files are not one TAESD model")
    return {"latent_channels": found[0][0], "variant": found[0][1]}


def _last_conv(state: dict[str, Tensor]) -> int:
    return max(int(k.split(".", 1)[0]) for k in state)


def load_taesd(files: dict[str, Path]):
    """The TAESDAutoencoder the files describe, in fp32 (the authors ship fp16 tensors)."""
    from latentae.ldm import read_checkpoint
    from latentae.models.taesd import TAESDAutoencoder

    states = {}
    for half, f in files.items():
        try:
            states[half] = read_checkpoint(f)
        except (OSError, RuntimeError, ValueError) as e:
            raise ModelFormatError(f"{f} is not a readable weight file: {e}") from None
    arch = infer_architecture(states.get("encoder"), states.get("decoder"))
    model = TAESDAutoencoder(**arch, with_encoder="encoder" in states,
                             with_decoder="decoder" in states)
    model.load_halves(states.get("encoder"), states.get("decoder"))
    return model
