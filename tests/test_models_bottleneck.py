"""Every model class says what its bottleneck is (`model.bottleneck`), its output carries the bottleneck's losses
and statistics the same way for every kind, and nothing outside latentae/models asks for a family instead."""
import ast
import inspect
from pathlib import Path

import pytest
import torch

from latentae.losses import AutoencoderLoss, DiscConfig, LossConfig
from latentae.models import FAMILIES, AutoencoderOutput, GaussianPosterior
from latentae.models.bottleneck import Bottleneck
from latentae.quantizers.base import QuantizerOutput

PACKAGE = Path(__file__).resolve().parents[1] / "latentae"
# family -> (kind, distills, latents already normalized)
EXPECTED = {"kl": ("gaussian", False, False), "vq": ("codebook", False, False), "dc": ("deterministic", True, False),
            "tiny": ("deterministic", True, True), "taesd": ("deterministic", True, True),
            "qwenimage": ("gaussian", False, False), "wan": ("gaussian", False, False),
            "hunyuanimage": ("gaussian", False, False), "rae": ("deterministic", False, True)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_model_class_describes_its_bottleneck_and_has_what_it_says(family):
    cls = FAMILIES[family].model
    b = cls.bottleneck
    assert isinstance(b, Bottleneck)
    assert (b.kind, b.distills, b.normalized_by is not None) == EXPECTED[family]
    assert b.samples == hasattr(cls, "posterior") == ("sample_posterior" in inspect.signature(cls.forward).parameters)
    assert b.tokenizes == hasattr(cls, "tokenize") == hasattr(cls, "detokenize")
    # (RAE's forward takes a target too, but its frozen encoder learns nothing from one)
    assert not b.distills or "target" in inspect.signature(cls.forward).parameters
    assert [b.samples, b.tokenizes, b.deterministic].count(True) == 1


def test_only_a_deterministic_bottleneck_distills_and_kinds_are_checked():
    with pytest.raises(ValueError, match="deterministic"):
        Bottleneck("gaussian", distills=True)
    with pytest.raises(ValueError, match="kind"):
        Bottleneck("vq")


def _loss(**kwargs):
    return AutoencoderLoss(LossConfig(perceptual_weight=0.0, reduction="mean", disc=DiscConfig(weight=0.0), **kwargs))


def test_the_loss_reads_every_kind_of_output_the_same_way():
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    rec = images * 0.5
    z = torch.randn(2, 4, 2, 2)
    total, logs = _loss()(images, AutoencoderOutput(reconstruction=rec, latent=z), 0)
    assert total.item() == pytest.approx(logs["loss/rec"].item())  # nothing added for a deterministic latent
    assert logs["latent/mean"] == z.mean() and logs["latent/std"] == z.std()
    assert not any(k.startswith(("loss/kl", "kl/", "codebook/")) for k in logs)

    quant = QuantizerOutput(quantized=z, indices=torch.zeros(2, 2, 2, dtype=torch.long),
                            losses={"commitment": torch.tensor(0.5)}, stats={"usage": torch.tensor(0.25)})
    out = AutoencoderOutput(reconstruction=rec, quant=quant, latent=z)
    assert out.bottleneck_losses == {"commitment": torch.tensor(0.5)}
    assert out.bottleneck_stats == {"codebook/usage": torch.tensor(0.25)}
    total, logs = _loss()(images, out, 0)
    assert total.item() == pytest.approx(logs["loss/rec"].item() + 0.5)
    assert logs["codebook/usage"] == 0.25 and logs["latent/mean"] == z.mean()

    posterior = GaussianPosterior(torch.cat([z, torch.zeros_like(z)], 1))
    sample = posterior.sample(torch.Generator().manual_seed(0))
    out = AutoencoderOutput(reconstruction=rec, posterior=posterior, latent=sample)
    assert out.bottleneck_losses == {} and out.bottleneck_stats == {} and out.bottleneck_latent is posterior.mean
    total, logs = _loss()(images, out, 0)
    assert total.item() == pytest.approx(logs["loss/rec"].item() + 1e-6 * logs["loss/kl"].item())
    assert logs["latent/mean"].item() == pytest.approx(z.mean().item())  # the posterior mean's, not the sample's
    with pytest.raises(ValueError, match="no latent"):
        _loss()(images, AutoencoderOutput(reconstruction=rec), 0)


def _family_questions(tree: ast.AST) -> list[tuple[int, str]]:
    """Comparisons with a `family`, hasattr(..., "posterior"), getattr(..., "distills"), DETERMINISTIC."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Attribute) and o.attr == "family" or isinstance(o, ast.Name) and o.id == "family"
                   for o in operands):
                found.append((node.lineno, "a comparison with a family"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) >= 2:
            name, key = node.func.id, node.args[1]
            if isinstance(key, ast.Constant) and (name, key.value) in (("hasattr", "posterior"),
                                                                        ("getattr", "distills")):
                found.append((node.lineno, f'{name}(..., "{key.value}")'))
        elif isinstance(node, ast.Name) and node.id == "DETERMINISTIC" or \
                isinstance(node, ast.ImportFrom) and any(a.name == "DETERMINISTIC" for a in node.names):
            found.append((node.lineno, "DETERMINISTIC"))
    return sorted(found)


def test_nothing_outside_the_models_asks_for_a_family():
    """The bottleneck is the model's to say (model.bottleneck): commands, the loss and the evaluator do not branch
    on family names or probe for methods. Reading model.family to print or record it is fine."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "models":
            continue
        for line, what in _family_questions(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert not offenders, "\n".join(offenders)


def test_the_family_check_finds_what_it_looks_for():
    source = ('if model.family == "vq": pass\nif family in ("dc", "tiny"): pass\nhasattr(model, "posterior")\n'
              'getattr(student, "distills", False)\nfrom latentae.models.config import DETERMINISTIC\n'
              'print(model.family)\n"the family in docs"\n')
    assert [line for line, _ in _family_questions(ast.parse(source))] == [1, 2, 3, 4, 5]
