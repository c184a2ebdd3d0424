"""`latentae probe`: deterministic for a seed, ranks by its samples so that latents carrying nothing (constant,
one colour per image, noise) rank below a real encoder while a rescaled copy ties with it, refuses unmeasured
config constants, and the CLI writes one report for several models."""
import dataclasses
import json

import pytest
import torch
from PIL import Image
from test_encode import tiny_kl

from latentae.cli import main
from latentae.errors import LatentaeError
from latentae.exporting import export
from latentae.models import KLAutoencoder
from latentae.probe import BUDGETS, probe
from latentae.probe.adversarial import Degenerate
from latentae.probe.latents import normalization

SMOKE = BUDGETS["smoke"]


@pytest.fixture(autouse=True)
def one_thread():
    """The DiT's ops are tiny: with 2 threads on a loaded machine OpenMP barriers made them ~70x slower
    (measured: 9 s vs 0.13 s for the smoke budget), and the numbers are the same at 1 and 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_deterministic_for_a_seed(demo_images):
    def run(seed, global_seed):
        model = tiny_kl(0)
        torch.manual_seed(global_seed)  # whatever the caller's random state: the probe seeds all it draws
        report = probe({"kl": model}, str(demo_images), budget=SMOKE, budget_name="smoke", seed=seed)
        report.pop("seconds")  # wall clock
        return report

    first = run(0, global_seed=10)
    assert run(0, global_seed=11) == first  # same process and threads: bit-identical, so exact equality
    assert run(1, global_seed=10)["models"]["kl"]["val_loss"] != first["models"]["kl"]["val_loss"]
    curve = first["models"]["kl"]["curve"]
    assert [p["step"] for p in curve] == [0, 3, 6] and set(curve[-1]["loss"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    entry = first["models"]["kl"]
    assert first["normalization"] == entry["normalization"] == "measured"  # the default
    assert first["rank_by"] == "fd-pixel" and set(entry["sample_metric"]) >= {"fd-pixel"}  # no weights offline
    assert entry["rate_unit"] == "KL nats/element" and entry["rate"] > 0 and entry["psnr"] > 0


def photos(shared_data, n, skip=0):
    """n Tiny ImageNet photos at 32 px, [-1, 1], after the first `skip` of shard 3 (the probe reads shard 0)."""
    from latentae.data.config import DataConfig
    from latentae.data.eval_stream import eval_loader

    loader = eval_loader(DataConfig(val=str(shared_data / "tiny-imagenet-64" / "tiny-00003.tar"), resolution=32,
                                    num_workers=0), batch_size=64)
    return torch.cat([b["image"] for b in loader.first(skip + n)])[skip:]


def test_pixel_distance_orders_degenerate_samples(shared_data):
    """The offline sample metric on real photos: another set of photos scores best, the same photos blurred
    (a weak but real decoder) next, and one photo repeated (constant latent), flat mean colours (a latent of one
    colour per image) or noise far worse."""
    import torch.nn.functional as F

    from latentae.evaluation.metrics import to_uint8
    from latentae.probe.samples import SampleJudge

    real, other = photos(shared_data, 128), photos(shared_data, 128, skip=128)
    judge = SampleJudge()
    fake = {"photos": other,
            "blurred": F.interpolate(F.avg_pool2d(other, 4), scale_factor=4.0, mode="bilinear"),
            "one photo": other[:1].expand_as(other),
            "flat colour": other.mean((2, 3), keepdim=True).expand_as(other),
            "noise": torch.randn(other.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1) * 0.5}
    d = {name: judge.measure(to_uint8(real), to_uint8(x))["fd-pixel"] for name, x in fake.items()}
    assert d["photos"] < d["blurred"] < min(d["one photo"], d["flat colour"], d["noise"]), d


def train_encoder(images, steps=120, seed=0) -> KLAutoencoder:
    """A tiny f4 KL autoencoder trained with L1 (+ KL 1e-6) on `images`: a real, if blurry, encoder."""
    torch.manual_seed(seed)
    model = KLAutoencoder(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = images[torch.randint(0, len(images), (16,), generator=g)]
        out = model(x)
        loss = (out.reconstruction - x).abs().mean() + 1e-6 * out.posterior.kl_per_element().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_latents_that_carry_nothing_rank_below_a_real_encoder(shared_data):
    # measured for encoder/probe seeds 0 and 1: fd-pixel real 27-29, noise 84-152, constant 95-110, mean colour
    # ~590; real PSNR 17.1-17.3 dB against the 16.05 dB floor; loss at t = 0.5 real 1.03-1.19, constant 0.54-0.58,
    # mean colour 0.72-0.79, noise 1.99-2.03
    real = train_encoder(photos(shared_data, 512))
    models = {"real": real, **{kind: Degenerate(real, kind) for kind in Degenerate.KINDS}}
    budget = dataclasses.replace(SMOKE, max_images=256, val_images=64, steps=150, eval_every=150, lr=3e-3,
                                 batch_size=16, samples=64, sample_steps=10)
    report = probe(models, str(shared_data / "tiny-imagenet-64" / "tiny-00000.tar"), budget=budget,
                   budget_name="test", seed=0)
    m = report["models"]
    loss = {name: e["val_loss"]["0.5"] for name, e in m.items()}
    # what the old ranking read (loss at t = 0.5) put the constant and mean-colour latents first
    assert max(loss["constant"], loss["mean-colour"]) < loss["real"], loss
    assert loss["noise"] > 1.8  # i.i.d. unit-variance latents: x_t at t = 0.5 says nothing about v
    # measured normalization undoes the scale: the scaled copy is the same model to the probe
    assert m["scaled"]["sample_metric"]["fd-pixel"] == pytest.approx(m["real"]["sample_metric"]["fd-pixel"], rel=1e-3)
    assert loss["scaled"] == pytest.approx(loss["real"], rel=1e-3)
    assert not m["real"]["warnings"] and not m["scaled"]["warnings"]
    assert all(m[k]["warnings"] for k in ("constant", "mean-colour", "noise"))
    assert set(report["ranking"][:2]) == {"real", "scaled"}  # equal up to float rounding: either order
    # the sample metric alone, without the floors, already puts the real encoder above the degenerate ones
    fd = {name: e["sample_metric"]["fd-pixel"] for name, e in m.items()}
    assert fd["real"] < min(fd["constant"], fd["mean-colour"], fd["noise"]), fd
    # config normalization of constants never measured for these latents (here none: scale 1) is refused
    train = real.encode(photos(shared_data, 64)).detach()
    with pytest.raises(LatentaeError, match="not measured for this model"):
        normalization(Degenerate(real, "scaled"), train / 20, "config")


def test_cli_writes_one_report_for_two_models(demo_images, tmp_path, capsys):
    a, b = export(tiny_kl(0), tmp_path / "a"), export(tiny_kl(1), tmp_path / "b")
    out = tmp_path / "out"
    argv = ["probe", "--model", str(a), "--model", str(b), "--data", str(demo_images), "--output", str(out),
            "--budget", "smoke"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.index("expected") < printed.index("1. ")  # the duration is announced before the run
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["ranking"]) == sorted([str(a), str(b)]) and report["budget"] == "smoke"
    assert all(m["normalization"] == "measured" for m in report["models"].values())
    md = (out / "report.md").read_text()
    assert str(a) in md and str(b) in md and "t=0.5" in md and "fd-pixel (ranked)" in md and "PSNR" in md
    grid = Image.open(out / "samples.png")
    assert grid.height > 2 * SMOKE.resolution  # one row of samples per model

    # the exports carry SD's 0.18215, never measured on these random-init latents: config is refused
    assert main(argv[:-2] + ["--budget", "smoke", "--normalize", "config", "--output", str(tmp_path / "c")]) == 2
    assert "latentae stats --write" in capsys.readouterr().err

    assert main(["probe", "--model", str(a), "--model", str(tmp_path / "missing"), "--data", str(demo_images),
                 "--output", str(tmp_path / "out2"), "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: no such file or directory" in err
    assert not (tmp_path / "out2").exists()  # every model loads before any work


def test_flux2_latents_are_probed_patchified_and_normalized(demo_images, tmp_path):
    """A FLUX.2 model's latents go to the DiT in its pipeline's layout (2x2 patchify), measured or by its bn
    statistics, and its samples decode through the inverse map; other families run unchanged beside it."""
    import latentae
    from families import FAMILIES

    for name in ("flux2", "tiny"):
        FAMILIES[name]().save_pretrained(tmp_path / name)
    models = {name: latentae.load(tmp_path / name) for name in ("flux2", "tiny")}
    report = probe(models, str(demo_images), budget=SMOKE, budget_name="smoke", seed=0, output=tmp_path / "out")
    flux2 = report["models"]["flux2"]
    assert flux2["latent_shape"] == [8, 16, 16] and flux2["probe_latent_shape"] == [32, 8, 8]
    assert flux2["normalized_train_std"] == pytest.approx(1.0, abs=0.05)
    assert report["models"]["tiny"]["probe_latent_shape"] == [4, 8, 8]
    assert report["models"]["tiny"]["rate"] is None  # deterministic latents: no rate
    assert (tmp_path / "out" / "samples.png").is_file()
