"""Training objectives: reconstruction, LPIPS, KL / quantizer terms, discriminators (PatchGAN; the RAE authors' on
frozen DINO features), diagnostics.

    loss = AutoencoderLoss(cfg.loss, model.bottleneck)
    out = model(images)
    total, logs = loss(images, out, step, last_layer=model.last_layer())
    if loss.discriminator_active(step):
        d_total, d_logs = loss(images, out, step, mode="discriminator")
"""
from latentae.losses.autoencoder_loss import AutoencoderLoss
from latentae.losses.config import DiscConfig, KLConfig, LossConfig
from latentae.losses.discriminator import NLayerDiscriminator
from latentae.losses.perceptual import PerceptualLoss

__all__ = ["AutoencoderLoss", "DiscConfig", "KLConfig", "LossConfig", "NLayerDiscriminator", "PerceptualLoss"]
