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
