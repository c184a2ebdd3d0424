"""Every preset loads, accepts the documented overrides, and builds its model; the tiny VQ preset trains."""
from pathlib import Path

import pytest
import torch

from conftest import assert_close_across_kernels, tiny_run_overrides, weight_layers
from latentae.losses import AutoencoderLoss
from latentae.models import build_model
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run, make_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
REQUIRED = ["output_dir=/tmp/x", "data.train=/tmp/shards", "data.val=/tmp/val", "data.resolution=128",
            "train.batch_size=2", "train.max_steps=7", "train.checkpoint_every=3", "train.resume=auto",
            "loss.perceptual_weight=0"]


def test_all_presets_present():
    assert {"sd-kl-f8", "kl-f8c16", "vq-f16-llamagen", "vq-f16-taming", "fsq-f16", "lfq-f16",
            "sd-decoder-finetune", "tiny-kl", "tiny-vq"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_builds(name, tmp_path, dino_vit):
    extra = []
    if name.endswith("decoder-finetune"):
        from latentae.models import KLAutoencoder

        KLAutoencoder(block_out_channels=(32, 32), norm_num_groups=8, layers_per_block=1).save_pretrained(tmp_path)
        extra = [f"train.init_from={tmp_path}"]
    if name.startswith("rae-"):  # the pretrained encoder is not here: a random one of the same architecture, 8 x 8
        extra = ["model.encoder_weights=random", "model.diffusers.encoder_input_size=112",  # tokens for 128 px
                 f"loss.disc.weights={dino_vit}"]  # nor the discriminator's DINO: a random tiny ViT
    cfg = load_run_config(str(CONFIGS / f"{name}.yaml"), REQUIRED + extra)
    assert cfg.train.max_steps == 7 and cfg.data.resolution == 128
    assert cfg.loss.perceptual_weight == 0 and cfg.train.resume == "auto"
    if not cfg.train.init_from:
        model = make_model(cfg)
        assert model.config.get("sample_size", 128) == 128  # the training resolution, never written into cfg.model
        loss = AutoencoderLoss(cfg.loss, model.bottleneck)
        assert loss.discriminator is not None


def test_tiny_vq_trains_and_exports(tmp_path, demo_images):
    overrides = [o for o in tiny_run_overrides(tmp_path, demo_images, "train.max_steps=4", "train.checkpoint_every=2",
                                               f"data.val={demo_images}", "eval.every=2")
                 if not o.startswith("model.norm")]
    run = Run(load_run_config(str(CONFIGS / "tiny-vq.yaml"), overrides + ["model.norm_num_groups=8"]))
    run.fit()
    from diffusers import VQModel

    vq = VQModel.from_pretrained(tmp_path / "export")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # diffusers quantizes again inside decode: a straight-through rounding residue
        ours = run.model.eval().decode(run.model.encode(x))
        assert_close_across_kernels(vq.decode(vq.encode(x).latents).sample, ours,
                                    layers=weight_layers(run.model.post_quant_conv, run.model.decoder))


def test_dc_ae_preset_is_the_published_f32c32():
    """dc-ae-f32c32 builds DC-AE f32c32 as diffusers converts dc-ae-f32c32-sana-1.0 (312.25M parameters, EfficientViT
    blocks in the last 3 levels), not AutoencoderDC()'s defaults (362.9M, ResBlocks only); on the meta device."""
    from diffusers.models.autoencoders.autoencoder_dc import EfficientViTBlock

    cfg = load_run_config(str(CONFIGS / "dc-ae-f32c32.yaml"), REQUIRED)
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(312_250_275, rel=1e-3)
    assert model.downsample_factor == 32 and model.config["latent_channels"] == 32
    for part in (model.vae.encoder, model.vae.decoder):
        assert sum(isinstance(m, EfficientViTBlock) for m in part.modules()) == 9  # 3 levels x 3 layers
