"""Weight resolution order (configured path, torch hub cache, download), the offline error, `fetch-weights`."""
import hashlib
import urllib.error
from pathlib import Path

import pytest

from latentae import weights
from latentae.cli import main
from latentae.errors import LatentaeError, MissingWeightsError



def test_checkpoints_dir_follows_torch_home(offline_cache):
    assert weights.checkpoints_dir() == offline_cache


def test_configured_path_then_cache(offline_cache, tmp_path):
    local = tmp_path / "my-vgg.pth"
    local.write_bytes(b"x")
    assert weights.resolve("vgg16", local) == local
    with pytest.raises(MissingWeightsError, match="does not exist: .*nowhere.pth"):
        weights.resolve("vgg16", tmp_path / "nowhere.pth")
    offline_cache.mkdir(parents=True)
    (offline_cache / "vgg16-397923af.pth").write_bytes(b"y")
    assert weights.resolve("vgg16") == offline_cache / "vgg16-397923af.pth"  # found without any download


def test_offline_error_names_file_directory_url_and_remedies(offline_cache):
    with pytest.raises(MissingWeightsError) as err:
        weights.resolve("alexnet")
    message = str(err.value)
    for part in ("alexnet-owt-7be5be79.pth", str(offline_cache), "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                 "latentae fetch-weights --only alexnet", "loss.perceptual_weight=0", "URLError: <urlopen error offline"):
        assert part in message
    with pytest.raises(MissingWeightsError) as err:
        weights.resolve("inception", download=False)
    assert "weights-inception-2015-12-05-6726825d.pth" in str(err.value) and "FID" in str(err.value)
    assert "perceptual_weight" not in str(err.value)


def test_download_lands_in_cache(offline_cache, monkeypatch):
    calls = []

    def fake(url, dest, **kwargs):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"weights")

    monkeypatch.setattr(weights, "_download", fake)
    assert weights.resolve("inception") == offline_cache / "weights-inception-2015-12-05-6726825d.pth"
    assert calls == [weights.REGISTRY["inception"].url]
    weights.resolve("inception")
    assert len(calls) == 1  # cached now


def test_download_checks_hash_and_leaves_no_partial_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"some weights")
    digest = hashlib.sha256(b"some weights").hexdigest()
    dest = tmp_path / "out" / "file.pth"
    with pytest.raises(OSError, match="corrupt"):
        weights._download(source.as_uri(), dest, sha256_prefix="00000000", progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    weights._download(source.as_uri(), dest, sha256_prefix=digest[:8], progress=False)
    assert dest.read_bytes() == b"some weights"


def test_lpips_heads_ship_with_the_package(offline_cache):
    for name in ("lpips-vgg", "lpips-alex"):
        path = weights.resolve(name, download=False)
        assert path.is_file() and path.parent.name == "v0.1"


def test_unknown_name():
    with pytest.raises(LatentaeError, match="known: vgg16, alexnet"):
        weights.resolve("resnet50")


def test_fetch_weights_command(offline_cache, tmp_path, monkeypatch, capsys):
    assert main(["fetch-weights", "--only", "lpips-alex"]) == 0
    assert capsys.readouterr().out.startswith("ok     lpips-alex:")

    assert main(["fetch-weights", "--only", "alexnet", "--only", "lpips-vgg"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("FAILED alexnet:") and lines[1].startswith("ok     lpips-vgg:")

    def fake(url, dest, **kwargs):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"w")

    monkeypatch.setattr(weights, "_download", fake)
    staged = tmp_path / "staged"
    assert main(["fetch-weights", "--dir", str(staged)]) == 0
    assert sorted(p.name for p in staged.iterdir()) == sorted(
        w.filename for w in weights.REGISTRY.values() if w.url)
    assert len(capsys.readouterr().out.splitlines()) == len(weights.REGISTRY)


def test_hub_models_take_whichever_weight_file_the_repository_holds(tmp_path, monkeypatch):
    """Older repositories (OpenAI's CLIP) hold pytorch_model.bin, newer ones model.safetensors: which one cannot be
    checked offline, so safetensors is tried first and the .bin fetched when the repository has only that."""
    import huggingface_hub
    from huggingface_hub import constants

    from latentae.weights import MissingWeightsError, resolve_hub_model

    local = tmp_path / "clip-local"
    local.mkdir()
    (local / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="missing model.safetensors or pytorch_model.bin in"):
        resolve_hub_model("clip", str(local))
    (local / "pytorch_model.bin").write_bytes(b"")
    assert resolve_hub_model("clip", str(local)) == local

    repo = {"config.json", "pytorch_model.bin"}  # what the fake hub repository holds
    fetched = []

    def fake_download(repo_id, filename, *, local_files_only=False, local_dir=None, **kwargs):
        path = Path(local_dir) / filename
        if local_files_only:
            if not path.is_file():
                raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        elif filename not in repo:
            raise huggingface_hub.errors.EntryNotFoundError(f"404: {filename}")
        else:
            path.write_text("{}")
            fetched.append(filename)
        return str(path)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    target = tmp_path / "staged"
    target.mkdir()
    assert resolve_hub_model("clip", directory=target) == target
    assert fetched == ["config.json", "pytorch_model.bin"]
    repo = {"config.json"}  # neither weight file: the error names both
    with pytest.raises(MissingWeightsError, match="model.safetensors or pytorch_model.bin missing"):
        resolve_hub_model("clip", directory=tmp_path / "empty")
