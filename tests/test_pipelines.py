"""An exported VAE works inside diffusers pipelines, built offline from random-init components: a tiny
StableDiffusionPipeline (loaded with `vae=` and by assigning `pipe.vae`) and a DiTPipeline. The pipeline's
decode equals latentae's own `decode(latents / scaling_factor)` with the factor `latentae stats --write` stored."""
import json

import numpy as np
import pytest
import torch
from test_encode import make_shards, tiny_kl

from latentae.cli import main
from latentae.exporting import export

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import (AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel,  # noqa: E402
                       StableDiffusionPipeline, UNet2DConditionModel)

SIZE = 32  # pixels; the tiny VAE downsamples 2x, so latents are 16 x 16


def tokenizer(folder):
    """A CLIPTokenizer from a hand-written vocabulary: lower-case letters, end-of-word letters, one merge, specials."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["!", *letters, *(c + "</w>" for c in letters), "ab</w>", "<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77, local_files_only=True)


def sd_pipeline(folder) -> str:
    """Save a tiny random-init SD pipeline (4 latent channels, like the tiny VAE) to `folder`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = tokenizer(folder / "tok")
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=4, out_channels=4, cross_attention_dim=32, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok.get_vocab()), hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd")
    return str(folder / "sd")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny latentae KL model exported, with its scaling factor measured and written by `latentae stats`."""
    tmp = tmp_path_factory.mktemp("pipelines")
    model = tiny_kl(seed=3)
    model_dir = export(model, tmp / "vae")
    pattern, _ = make_shards(tmp / "images", 1, 4)
    assert main(["stats", "--model", str(model_dir), "--data", pattern, "--workers", "0", "--precision", "fp32",
                 "--write"]) == 0
    return model_dir, tmp


def run_sd(pipe, output_type):
    return pipe("a b", num_inference_steps=2, height=SIZE, width=SIZE, guidance_scale=1.0, output_type=output_type,
                generator=torch.Generator().manual_seed(0)).images


def test_stable_diffusion_pipeline_with_exported_vae(exported):
    from latentae.loading import load

    model_dir, tmp = exported
    ours = load(model_dir)
    scale = json.loads((model_dir / "config.json").read_text())["scaling_factor"]
    assert scale != 0.18215  # written by stats, not the default
    pipe = StableDiffusionPipeline.from_pretrained(sd_pipeline(tmp), vae=AutoencoderKL.from_pretrained(model_dir),
                                                   local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == scale
    latents = run_sd(pipe, "latent")
    images = run_sd(pipe, "np")
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
    with torch.no_grad():
        expected = (ours.decode(latents / scale) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(images, expected, atol=1e-4)  # the same modules and batch: bit-identical here

    # the same by swapping the module of an already built pipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp / "sd"), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae = AutoencoderKL.from_pretrained(model_dir)
    np.testing.assert_allclose(run_sd(pipe, "np"), images, atol=1e-5)  # the same run again: bit-identical here


def test_dit_pipeline_with_exported_vae(exported, tmp_path):
    model_dir, _ = exported
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=2, sample_size=SIZE // 2, patch_size=2, norm_num_groups=8,
                                        num_embeds_ada_norm=1000)  # DiTPipeline hard-codes class 1000 as "no class"
    stock = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    DiTPipeline(transformer=transformer, vae=stock, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "dit")
    loaded = DiTPipeline.from_pretrained(tmp_path / "dit", vae=AutoencoderKL.from_pretrained(model_dir),
                                         local_files_only=True)
    swapped = DiTPipeline.from_pretrained(tmp_path / "dit", local_files_only=True)
    swapped.vae = AutoencoderKL.from_pretrained(model_dir)
    outputs = []
    for pipe in (loaded, swapped):
        pipe.set_progress_bar_config(disable=True)
        assert pipe.vae.config.scaling_factor == json.loads((model_dir / "config.json").read_text())["scaling_factor"]
        outputs.append(pipe(class_labels=[1, 2], num_inference_steps=2, output_type="np",
                            generator=torch.Generator().manual_seed(0)).images)
    assert outputs[0].shape == (2, SIZE, SIZE, 3) and np.isfinite(outputs[0]).all() and outputs[0].std() > 0
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)  # the same run twice: bit-identical here
