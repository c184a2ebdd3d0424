"""Small random-init diffusers autoencoders of every family latentae opens (fast on CPU; 32 px images)."""
import torch


def flux2():
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(block_out_channels=(16, 32), layers_per_block=1, latent_channels=8, norm_num_groups=8,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             sample_size=32)
    with torch.no_grad():  # non-trivial statistics, as a trained model has
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def dc():
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    return AutoencoderDC(latent_channels=8, attention_head_dim=8, encoder_block_types=("ResBlock", "EfficientViTBlock"),
                         decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(16, 32),
                         decoder_block_out_channels=(16, 32), encoder_layers_per_block=(1, 1),
                         decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), (5,)),
                         decoder_qkv_multiscales=((), (5,)), scaling_factor=0.4)


def tiny():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(16, 16, 16),
                           num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4)


def kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         sample_size=32)


FAMILIES = {"flux2": flux2, "dc": dc, "tiny": tiny, "kl": kl}


# The image VAEs of current pipelines (latentae/models/image_vaes.py): the smallest arguments that build.
def qwenimage():
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                  latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])


def wan():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)  # Wan 2.2's layout: 2x2 patchify, residual blocks, a wider decoder (f4 here)
    return AutoencoderKLWan(base_dim=8, decoder_base_dim=16, z_dim=4, dim_mult=[1, 1], num_res_blocks=1,
                            temperal_downsample=[False], is_residual=True, patch_size=2, in_channels=12,
                            out_channels=12, scale_factor_spatial=4, latents_mean=[0.1, -0.2, 0.3, 0.0],
                            latents_std=[1.5, 0.5, 2.0, 1.0])


def hunyuanimage():
    from diffusers import AutoencoderKLHunyuanImage

    torch.manual_seed(0)  # GroupNorm(32) inside: widths are multiples of 32
    return AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                                     layers_per_block=1, spatial_compression_ratio=2, sample_size=32,
                                     scaling_factor=0.5)


def rae():
    from diffusers import AutoencoderRAE

    torch.manual_seed(0)  # a 1-layer DINOv2-with-registers encoder (64 wide: one 64-d head), 32 px in and out
    return AutoencoderRAE(encoder_hidden_size=64, encoder_patch_size=8, encoder_num_hidden_layers=1,
                          encoder_input_size=32, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=64, patch_size=8)


IMAGE_VAES = {"qwenimage": qwenimage, "wan": wan, "hunyuanimage": hunyuanimage, "rae": rae}
