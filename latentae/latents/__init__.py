"""Datasets in latent space: encode images to latent / token shards, decode them back, and measure the
latent statistics diffusion pipelines normalize with.

    from latentae.latents import encode_dataset, write_manifest, iter_encoded, decode_encoded, latent_stats
"""
from latentae.latents.decode import decode_encoded, save_decoded
from latentae.latents.encode import EncodeReport, LatentEncoder, encode_dataset, write_manifest
from latentae.latents.format import iter_encoded, read_manifest
from latentae.latents.runtime import Runtime, launch
from latentae.latents.stats import LatentStats, latent_stats, latent_stats_of_images, write_normalization

__all__ = ["EncodeReport", "LatentEncoder", "LatentStats", "Runtime", "decode_encoded", "encode_dataset",
           "iter_encoded", "latent_stats", "latent_stats_of_images", "launch", "read_manifest", "save_decoded",
           "write_manifest", "write_normalization"]
