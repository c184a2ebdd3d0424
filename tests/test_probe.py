"""`latentae probe`: deterministic for a seed, ranks a pure-noise latent space below a real encoder's, and the CLI
writes one report for several models."""
import dataclasses
import json

import pytest
import torch
from PIL import Image
from test_encode import tiny_kl

from latentae.cli import main
from latentae.exporting import export
from latentae.models import KLAutoencoder
from latentae.probe import BUDGETS, probe

SMOKE = BUDGETS["smoke"]


@pytest.fixture(autouse=True)
def one_thread():
    """The DiT's ops are tiny: with 2 threads on a loaded machine OpenMP barriers made them ~70x slower
    (measured: 9 s vs 0.13 s for the smoke budget), and the numbers are the same at 1 and 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NoiseLatents(KLAutoencoder):
    """A latent space of pure noise: i.i.d. N(0, 1) latents (tiny_kl's shape) independent of the images."""

    def __init__(self):
        super().__init__(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8)
        self.generator = torch.Generator().manual_seed(0)

    def encode(self, images):
        b, _, h, w = images.shape
        return torch.randn(b, 4, h // 2, w // 2, generator=self.generator)


def test_deterministic_for_a_seed(demo_images):
    def run(seed, global_seed):
        model = tiny_kl(0)
        torch.manual_seed(global_seed)  # whatever the caller's random state: the probe seeds all it draws
        return probe({"kl": model}, str(demo_images), budget=SMOKE, budget_name="smoke", seed=seed)

    first = run(0, global_seed=10)
    assert run(0, global_seed=11) == first  # same process and threads: bit-identical, so exact equality
    assert run(1, global_seed=10)["models"]["kl"]["val_loss"] != first["models"]["kl"]["val_loss"]
    curve = first["models"]["kl"]["curve"]
    assert [p["step"] for p in curve] == [0, 3, 6] and set(curve[-1]["loss"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}


def test_ranks_noise_latents_below_a_real_encoder(demo_images):
    # Both standardized by their own training statistics ("measured"), so only structure differs. At t = 0.5,
    # x_t = (x0 + eps) / 2 is uncorrelated with v = eps - x0 for i.i.d. unit-variance x0: no model gets below
    # ~2 on noise latents, whereas the random-init encoder's latents of smooth images are spatially correlated.
    budget = dataclasses.replace(SMOKE, steps=120, eval_every=120, lr=3e-3, max_images=24, batch_size=8)
    report = probe({"kl": tiny_kl(1), "noise": NoiseLatents()}, str(demo_images), budget=budget,
                   budget_name="smoke", seed=1, normalize="measured")
    kl, noise = report["models"]["kl"], report["models"]["noise"]
    # measured ratio 0.83 for this seed (0.79-0.88 over seeds 0-3, the same at 1 and 2 threads): 10% margin
    # for other CPUs' kernels. The mean over levels would not do: at this budget it ranked noise first for
    # seed 0 (1.55 vs 1.69), the extreme levels being nearly solved by a linear map on i.i.d. latents.
    assert kl["val_loss"]["0.5"] < 0.92 * noise["val_loss"]["0.5"]
    assert noise["val_loss"]["0.5"] > 1.8  # the bound above, less finite-sample scatter (measured 1.89-2.00)
    assert report["ranking"] == ["kl", "noise"]  # the ranking reads t = 0.5 (run.RANK_LEVEL)


def test_cli_writes_one_report_for_two_models(demo_images, tmp_path, capsys):
    a, b = export(tiny_kl(0), tmp_path / "a"), export(tiny_kl(1), tmp_path / "b")
    out = tmp_path / "out"
    argv = ["probe", "--model", str(a), "--model", str(b), "--data", str(demo_images), "--output", str(out),
            "--budget", "smoke"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["ranking"]) == sorted([str(a), str(b)]) and report["budget"] == "smoke"
    assert all(m["normalization"] == "config" for m in report["models"].values())
    md = (out / "report.md").read_text()
    assert str(a) in md and str(b) in md and "t=0.5" in md
    grid = Image.open(out / "samples.png")
    assert grid.height > 2 * SMOKE.resolution  # one row of samples per model

    capsys.readouterr()
    assert main(["probe", "--model", str(a), "--model", str(tmp_path / "missing"), "--data", str(demo_images),
                 "--output", str(tmp_path / "out2"), "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no such file or directory" in err
    assert not (tmp_path / "out2").exists()  # every model loads before any work


def test_flux2_latents_are_probed_patchified_and_normalized(demo_images, tmp_path):
    """A FLUX.2 model's latents go to the DiT as its pipeline prepares them (2x2 patchify + bn statistics), and
    its samples decode through the inverse map; other families run unchanged beside it."""
    import latentae
    from families import FAMILIES

    for name in ("flux2", "tiny"):
        FAMILIES[name]().save_pretrained(tmp_path / name)
    models = {name: latentae.load(tmp_path / name) for name in ("flux2", "tiny")}
    report = probe(models, str(demo_images), budget=SMOKE, budget_name="smoke", seed=0, output=tmp_path / "out")
    flux2 = report["models"]["flux2"]
    assert flux2["latent_shape"] == [8, 16, 16] and flux2["probe_latent_shape"] == [32, 8, 8]
    assert report["models"]["tiny"]["probe_latent_shape"] == [4, 8, 8]
    assert (tmp_path / "out" / "samples.png").is_file()
