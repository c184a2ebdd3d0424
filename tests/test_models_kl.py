"""KL autoencoder: posterior maths, and the diffusers AutoencoderKL contract in both directions."""
import pytest
import torch
from diffusers import AutoencoderKL

import latentae
from latentae.exporting import export
from latentae.models import KLAutoencoder, ModelConfig, build_model

TINY = dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=32)
# Small versions of the four families (REFERENCE: scale / shift / quant convs / channels).
FAMILIES = {
    "sd1": dict(latent_channels=4, scaling_factor=0.18215, force_upcast=False),
    "sdxl": dict(latent_channels=4, scaling_factor=0.13025, force_upcast=True),
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                use_post_quant_conv=False),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                 use_post_quant_conv=False),
}


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def perturbed(model):
    """Random non-default weights everywhere (diffusers zero-inits nothing here, but be explicit)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def assert_same_function(ours, vae, x):
    # the same diffusers modules on the same batch in one process run the same kernels (bit-identical here); 1e-5
    # of these ~1-sized values still tells a missing or swapped layer (~1e-1)
    with torch.no_grad():
        post, dist = ours.posterior(x), vae.encode(x).latent_dist
        assert (post.mean - dist.mean).abs().max() <= 1e-5
        assert (post.logvar - dist.logvar).abs().max() <= 1e-5
        assert (ours.decode(post.mean) - vae.decode(dist.mean).sample).abs().max() <= 1e-5
        assert (ours(x, sample_posterior=False).reconstruction - vae(x).sample).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_diffusers_with_same_outputs(tmp_path, family):
    model = perturbed(build_model(ModelConfig(**TINY, **FAMILIES[family])))
    export(model, tmp_path)
    vae = AutoencoderKL.from_pretrained(tmp_path).eval()
    for key, value in FAMILIES[family].items():
        assert vae.config[key] == value, key
    assert_same_function(model, vae, images())


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_directory_imports_with_same_outputs(tmp_path, family):
    torch.manual_seed(0)
    n = len(TINY["block_out_channels"])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        **TINY, **FAMILIES[family])
    vae.save_pretrained(tmp_path)
    model = latentae.load(tmp_path)
    assert isinstance(model, KLAutoencoder) and not model.training
    assert model.config.scaling_factor == FAMILIES[family]["scaling_factor"]
    assert_same_function(model, vae.eval(), images())


def test_forward_returns_reconstruction_and_posterior():
    model = KLAutoencoder(**TINY)
    out = model(images())
    assert out.reconstruction.shape == (2, 3, 32, 32)
    assert out.posterior.mean.shape == (2, 4, 4, 4) and out.quant is None
    assert out.posterior.kl().shape == (2,) and out.posterior.kl_per_channel().shape == (2, 4)
    assert model.last_layer() is model.decoder.conv_out.weight


def test_closed_form_kl_matches_monte_carlo():
    from latentae.models import GaussianPosterior

    g = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn(1, 3, 2, 2, generator=g), torch.randn(1, 3, 2, 2, generator=g) * 0.5], 1)
    post = GaussianPosterior(moments)
    n = 200_000
    z = post.mean + post.std * torch.randn(n, 3, 2, 2, generator=g)
    log_q = (-0.5 * ((z - post.mean) / post.std) ** 2 - post.logvar / 2).sum(dim=(1, 2, 3))
    log_p = (-0.5 * z**2).sum(dim=(1, 2, 3))  # the 2*pi constants cancel
    mc = (log_q - log_p).mean()
    assert torch.allclose(post.kl()[0], mc, rtol=0.02), (post.kl(), mc)


def test_gradients_flow_through_reparameterized_sample():
    model = KLAutoencoder(**TINY)
    out = model(images(), generator=torch.Generator().manual_seed(0))
    out.reconstruction.square().mean().backward()
    assert model.encoder.conv_out.weight.grad.abs().sum() > 0  # through mean and std of the sample
    post = model.posterior(images())
    post.logvar.retain_grad()
    post.sample(torch.Generator().manual_seed(0)).sum().backward()
    assert post.logvar.grad.abs().sum() > 0


def test_sampling_is_reproducible_with_generator():
    model = KLAutoencoder(**TINY).eval()
    a = model(images(), generator=torch.Generator().manual_seed(3)).reconstruction
    b = model(images(), generator=torch.Generator().manual_seed(3)).reconstruction
    assert torch.equal(a, b)
