"""LDM / CompVis single-file checkpoints: key mapping both ways, checked against diffusers' own converter."""
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

import latentae
from latentae import ldm
from latentae.errors import ModelFormatError

N = 3
CONFIG = dict(block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8, latent_channels=4,
              down_block_types=("DownEncoderBlock2D",) * N, up_block_types=("UpDecoderBlock2D",) * N)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(**CONFIG).eval()


def test_round_trip_is_exact(vae):
    state = vae.state_dict()
    as_ldm = ldm.diffusers_to_ldm(state)
    assert "encoder.down.0.block.1.conv1.weight" in as_ldm and "decoder.up.0.upsample.conv.weight" not in as_ldm
    assert as_ldm["encoder.mid.attn_1.q.weight"].ndim == 4
    assert "encoder.down.1.block.0.nin_shortcut.weight" in as_ldm  # real LDM naming (16 -> 32 channels)
    assert not any("conv_shortcut" in k or "down_blocks" in k for k in as_ldm)
    back = ldm.ldm_to_diffusers(as_ldm)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_matches_diffusers_converter(vae):
    """Our LDM layout is what diffusers' single-file loader reads, so the mapping is the real one."""
    as_ldm = {f"first_stage_model.{k}": v for k, v in ldm.diffusers_to_ldm(vae.state_dict()).items()}
    converted = convert_ldm_vae_checkpoint(as_ldm, dict(CONFIG))
    ours = ldm.ldm_to_diffusers(ldm.strip_prefix(as_ldm))
    assert converted.keys() == ours.keys()
    assert all(torch.equal(converted[k].reshape(ours[k].shape), ours[k]) for k in ours)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_single_file_loads_with_inferred_architecture(tmp_path, vae, suffix):
    as_ldm = {f"first_stage_model.{k}": v for k, v in ldm.diffusers_to_ldm(vae.state_dict()).items()}
    as_ldm["model.diffusion_model.dummy.weight"] = torch.zeros(1)  # a full SD file carries the UNet too
    path = tmp_path / f"sd{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": as_ldm, "global_step": 7}, path)
    else:
        from safetensors.torch import save_file

        save_file(as_ldm, path)
    model = latentae.load(path, scaling_factor=0.13025, norm_num_groups=8)  # GroupNorm groups are not in the weights
    assert list(model.config.block_out_channels) == [16, 32, 32] and model.config.layers_per_block == 2
    assert model.config.scaling_factor == 0.13025
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():  # the same modules and batch: the same kernels (bit-identical here)
        assert torch.allclose(model.decode(model.encode(x)), vae(x).sample, atol=1e-6)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, path)
    with pytest.raises(ModelFormatError, match="not a readable LDM autoencoder checkpoint"):
        latentae.load(path)
