"""LPIPS loss: trunk weights resolved offline-safely and loaded, frozen, eval-only, fp32 under autocast."""

import pytest
import torch
import torchvision

from latentae import weights
from latentae.errors import MissingWeightsError, ModelFormatError
from latentae.losses import AutoencoderLoss, LossConfig, PerceptualLoss



def _alexnet_features_checkpoint(path):
    """A torchvision-format alexnet checkpoint (random values; only the trunk's `features.*` keys)."""
    state = {k: v for k, v in torchvision.models.alexnet().state_dict().items() if k.startswith("features.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_missing_trunk_weights_fail_with_one_clear_message(offline_cache):
    with pytest.raises(MissingWeightsError) as err:
        AutoencoderLoss(LossConfig())  # SD recipe: LPIPS-VGG, pretrained trunk
    message = str(err.value)
    for part in ("vgg16-397923af.pth", str(offline_cache), "https://download.pytorch.org/models/vgg16-397923af.pth",
                 "latentae fetch-weights", "loss.perceptual_weight=0"):
        assert part in message
    assert "\n" not in message
    assert AutoencoderLoss(LossConfig(perceptual_weight=0.0)).perceptual is None  # runs without the file


def test_trunk_loaded_from_cache_and_from_configured_path(offline_cache, tmp_path):
    configured = _alexnet_features_checkpoint(tmp_path / "elsewhere" / "my-alexnet.pth")
    cached = _alexnet_features_checkpoint(offline_cache / "alexnet-owt-7be5be79.pth")
    for state, module in ((configured, PerceptualLoss("alex", trunk_path=tmp_path / "elsewhere" / "my-alexnet.pth")),
                          (cached, PerceptualLoss("alex"))):
        trunk = module.lpips.net
        assert torch.equal(trunk.slice1[0].weight, state["features.0.weight"])
        assert torch.equal(getattr(trunk.slice5, "10").bias, state["features.10.bias"])
    state = cached
    # lpips' calibrated linear heads come from the package, also with a random trunk
    heads = torch.load(weights.resolve("lpips-alex"), map_location="cpu", weights_only=True)
    random_trunk = PerceptualLoss("alex", random_init=True)
    assert torch.equal(random_trunk.lpips.lin0.model[1].weight, heads["lin0.model.1.weight"])
    assert not torch.equal(random_trunk.lpips.net.slice1[0].weight, state["features.0.weight"])

    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelFormatError, match="features.0.weight"):
        PerceptualLoss("alex", trunk_path=wrong)


def test_lpips_is_frozen_eval_and_fp32_under_autocast():
    module = PerceptualLoss("alex", random_init=True)
    assert not any(p.requires_grad for p in module.parameters())
    module.train()  # e.g. a parent's .train(): the heads' dropout must stay off
    assert not any(m.training for m in module.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = module(x.bfloat16(), y.bfloat16())
    assert value.dtype == torch.float32 and value.shape == (2,)
    assert torch.equal(module(x, y), module(x, y))  # deterministic: no dropout
    module(x, y).sum().backward()
    assert x.grad.abs().sum() > 0  # the loss is frozen, yet its gradient reaches the input
