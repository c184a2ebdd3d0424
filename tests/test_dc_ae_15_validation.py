"""DC-AE 1.5 in training: validation at every channel count, train.export=best by the mean over the counts, resume."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_dc_ae_15 import COUNTS, fresh_accelerate_state, tiny_model, write_config  # noqa: F401 (a fixture)

from latentae.config import ConfigError
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run
from latentae.trainer.monitor import Monitor
from latentae.trainer.validation import Validation


def validating_config(tmp_path, data, **changes):
    """The tiny structured run of test_dc_ae_15, validated every 2 steps on 4 images, exporting its best."""
    path = write_config(tmp_path, data)
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val"] = str(data)
    raw["eval"] = {"every": 2, "max_images": 4, "metrics": ["psnr"]}
    raw["train"].update(export="best", max_steps=6)
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(str(path), [])


def logged_values(monkeypatch) -> dict:
    """step -> the val/ values each validation logs."""
    logged = {}
    original = Monitor.scalars

    def scalars(self, values, step):
        if any(k.startswith("val/") for k in values):
            logged[step] = dict(values)
        original(self, values, step)
    monkeypatch.setattr(Monitor, "scalars", scalars)
    return logged


def export_metadata(run_dir):
    return json.loads((run_dir / "export" / "latentae.json").read_text())["metadata"]


def test_each_count_is_validated_and_best_is_the_mean(tmp_path, demo_images, monkeypatch, capsys):
    from latentae.data.eval_stream import eval_loader
    from latentae.evaluation import evaluate_many
    from latentae.loading import load

    logged = logged_values(monkeypatch)
    run = Run(validating_config(tmp_path, demo_images))
    run.fit()
    out = capsys.readouterr().out
    assert "validation at 3 channel counts (2, 4, 8): 3 encode + decode passes per image" in out
    assert "val psnr@mean " in out and "(c2 " in out
    assert sorted(logged) == [2, 4, 6]
    for values in logged.values():
        assert set(values) >= {f"val/psnr@{n}" for n in COUNTS} | {"val/psnr@mean"} and "val/psnr" not in values
        assert values["val/psnr@mean"] == pytest.approx(sum(values[f"val/psnr@{n}"] for n in COUNTS) / 3)
        assert len({values[f"val/psnr@{n}"] for n in COUNTS}) == 3  # each count its own reconstruction
    best = max(logged, key=lambda s: logged[s]["val/psnr@mean"])
    meta = export_metadata(tmp_path / "run")
    assert meta["step"] == best and meta["selected_by"] == "val/psnr@mean" and meta["channels"] == COUNTS
    assert meta["value"] == pytest.approx(logged[best]["val/psnr@mean"])

    exported = load(tmp_path / "run" / "export")  # the logged numbers are the export's own at each count
    results = evaluate_many({n: exported.at_channels(n) for n in COUNTS},
                            eval_loader(run.cfg.data, batch_size=4), metrics=("psnr",), max_images=4)
    assert {n: r.metrics["psnr"] for n, r in results.items()} == pytest.approx(
        {n: logged[best][f"val/psnr@{n}"] for n in COUNTS}, abs=1e-4)


def scripted_evaluation(monkeypatch, psnr_by_call: list[dict]):
    """evaluate_many returning the PSNR of `psnr_by_call[i]` (count -> dB) at its i-th call."""
    import latentae.evaluation
    from latentae.evaluation.evaluator import EvalResult

    calls = []

    def evaluate_many(models, batches, **options):
        scripted = psnr_by_call[len(calls)]
        calls.append(list(models))
        return {name: EvalResult(n_images=4, skipped={}, metrics={"psnr": scripted[int(name[1:])]})
                for name in models}
    monkeypatch.setattr(latentae.evaluation, "evaluate_many", evaluate_many)
    return calls


# the full count is best at step 2, the mean over the counts at step 4
PSNR = [{2: 10.0, 4: 15.0, 8: 30.0}, {2: 20.0, 4: 20.0, 8: 25.0}, {2: 5.0, 4: 5.0, 8: 5.0}]


@pytest.mark.parametrize("channels, step, value", [(None, 4, 65 / 3), ([8], 2, 30.0), ([2, 4], 4, 20.0)])
def test_best_is_ranked_by_the_mean_over_the_validated_counts(tmp_path, demo_images, monkeypatch, channels, step,
                                                               value):
    calls = scripted_evaluation(monkeypatch, PSNR)
    run = Run(validating_config(tmp_path, demo_images, eval__channels=channels))
    run.fit()
    assert calls == [[f"@{n}" for n in channels or COUNTS]] * 3
    meta = export_metadata(tmp_path / "run")
    assert (meta["step"], meta["selected_by"], meta["channels"]) == (step, "val/psnr@mean", channels or COUNTS)
    assert meta["value"] == pytest.approx(value)


def test_killed_and_resumed_run_keeps_its_best_and_ends_the_same(tmp_path, demo_images, monkeypatch):
    logged = logged_values(monkeypatch)
    Run(validating_config(tmp_path / "whole", demo_images)).fit()
    whole = dict(logged)
    logged.clear()

    killed = Run(validating_config(tmp_path / "killed", demo_images))
    original_step = Run.train_step

    def dies_at_step_5(self, batches, step):
        if step == 5:
            raise KeyboardInterrupt  # the step-4 checkpoint and validations at 2 and 4 are done
        return original_step(self, batches, step)
    monkeypatch.setattr(Run, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    monkeypatch.setattr(Run, "train_step", original_step)
    resumed = Run(validating_config(tmp_path / "killed", demo_images, train__resume="auto"))
    best_before = max((2, 4), key=lambda s: whole[s]["val/psnr@mean"])
    assert resumed.best["step"] == best_before  # read back from the export, ranked the same way
    resumed.fit()
    assert logged == whole  # validations at 2 and 4 before the kill, at 6 after it: the same values
    assert export_metadata(tmp_path / "whole" / "run") == {
        **export_metadata(tmp_path / "killed" / "run"), "run": str(tmp_path / "whole" / "run")}
    a = load_file(tmp_path / "whole" / "run" / "export" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "run" / "export" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]


def test_validated_counts_are_checked(tmp_path, demo_images):
    model = tiny_model()
    assert Validation(model, None).counts == tuple(COUNTS)
    with pytest.raises(ConfigError, match="eval.channels': \\[3\\] not distinct counts among"):
        Validation(model, [2, 3])
    with pytest.raises(ConfigError, match="eval.channels': \\[2, 2\\] not distinct"):
        Validation(model, [2, 2])
    with pytest.raises(ConfigError, match="eval.channels' needs a structured latent"):
        Validation(tiny_model(counts=[]), [8])
    assert Validation(tiny_model(counts=[]), None).key("psnr") == "val/psnr"
    with pytest.raises(ConfigError, match="eval.channels' picks the channel counts validated on data.val"):
        path = write_config(tmp_path, demo_images)
        load_run_config(str(path), ["eval.channels=[2]"])


def test_the_rule_is_in_help_and_readme(capsys):
    from pathlib import Path

    from latentae.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "eval.channels" in text and "val/psnr@mean, which train.export=best ranks by" in text
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "`eval.channels: [16, 128]` validates fewer" in readme and "`val/psnr@mean`, which `train.export=best`" in readme
