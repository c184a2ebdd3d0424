"""train.export=best: the export holds the weights of the best validation, also across a resume, written atomically."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_run_overrides
from latentae.config import ConfigError
from latentae.trainer.config import load_run_config
from latentae.trainer.loop import Run

PRESET = str(Path(__file__).resolve().parents[1] / "configs" / "tiny-kl.yaml")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def scripted_validation(monkeypatch, scores: dict[int, float], metric: str = "psnr") -> dict[int, dict]:
    """Run.validate returns `scores[step]` as val/<metric> and records the weights it would have measured."""
    seen = {}

    def validate(self, step, monitor):
        seen[step] = {k: v.detach().clone() for k, v in self.export_model().state_dict().items()}
        return {f"val/{metric}": scores[step]}

    monkeypatch.setattr(Run, "validate", validate)
    return seen


def run(tmp_path, demo_images, *extra) -> Run:
    cfg = load_run_config(PRESET, tiny_run_overrides(tmp_path, demo_images, f"data.val={demo_images}",
                                                     "eval.every=2", "train.checkpoint_every=2", *extra))
    r = Run(cfg)
    r.fit()
    return r


def exported(tmp_path) -> tuple[dict, dict]:
    metadata = json.loads((tmp_path / "export" / "latentae.json").read_text())["metadata"]
    return metadata, load_file(tmp_path / "export" / "diffusion_pytorch_model.safetensors")


def converted(r: Run, state: dict) -> dict:
    """`state` (the trainer's model) as the diffusers AutoencoderKL weights the exporter writes."""
    import copy

    from latentae.exporting import to_diffusers

    model = copy.deepcopy(r.model)
    model.load_state_dict(state)
    return to_diffusers(model).state_dict()


def test_best_validation_is_exported_not_the_last(tmp_path, demo_images, monkeypatch):
    seen = scripted_validation(monkeypatch, {2: 20.0, 4: 25.0, 6: 22.0})
    r = run(tmp_path, demo_images, "train.max_steps=6", "train.export=best")
    metadata, weights = exported(tmp_path)
    assert metadata["step"] == 4 and metadata["selected_by"] == "val/psnr" and metadata["value"] == 25.0
    assert all(torch.equal(weights[k], v) for k, v in converted(r, seen[4]).items())
    assert not all(torch.equal(weights[k], v) for k, v in converted(r, seen[6]).items())


def test_last_is_the_default_and_lower_is_better_for_lpips(tmp_path, demo_images, monkeypatch):
    scripted_validation(monkeypatch, {2: 0.2, 4: 0.5}, metric="lpips")
    run(tmp_path / "last", demo_images, "train.max_steps=4")
    assert exported(tmp_path / "last")[0]["step"] == 4
    r = run(tmp_path / "best", demo_images, "train.max_steps=4", "train.export=best", "train.export_metric=lpips",
            "eval.metrics=[psnr,lpips]")
    assert exported(tmp_path / "best")[0]["step"] == 2 and r.best["value"] == 0.2


def test_resume_remembers_the_best_so_far(tmp_path, demo_images, monkeypatch):
    """A resumed run compares with the best validation before the interruption, not only with its own."""
    scripted_validation(monkeypatch, {2: 25.0, 4: 22.0, 6: 23.0})
    run(tmp_path, demo_images, "train.max_steps=4", "train.export=best")
    resumed = run(tmp_path, demo_images, "train.max_steps=6", "train.export=best", "train.resume=auto")
    assert resumed.state.step == 6 and exported(tmp_path)[0]["step"] == 2


def test_export_is_atomic(tmp_path, demo_images, monkeypatch):
    """A failure while writing a better export leaves the previous one whole."""
    import latentae.exporting

    scripted_validation(monkeypatch, {2: 20.0, 4: 25.0})
    real = latentae.exporting.export

    def crash_at_step_4(model, output_dir, *, metadata=None):
        real(model, output_dir, metadata=metadata)
        if metadata["step"] == 4:
            (Path(output_dir) / "diffusion_pytorch_model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt

    monkeypatch.setattr(latentae.exporting, "export", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, demo_images, "train.max_steps=4", "train.export=best")
    metadata, weights = exported(tmp_path)
    assert metadata["step"] == 2 and weights


def test_config_errors_name_the_key(tmp_path, demo_images):
    base = tiny_run_overrides(tmp_path, demo_images)
    with pytest.raises(ConfigError, match="train.export=best.*data.val"):
        load_run_config(PRESET, base + ["train.export=best"])
    with pytest.raises(ConfigError, match="train.export_metric=rfid.*eval.metrics"):
        load_run_config(PRESET, base + ["train.export=best", "train.export_metric=rfid", f"data.val={demo_images}"])
    with pytest.raises(ConfigError, match="train.export_metric.*psnr, ssim, lpips, rfid.*'mse'"):
        load_run_config(PRESET, base + ["train.export_metric=mse"])
    with pytest.raises(ConfigError, match="train.export"):
        load_run_config(PRESET, base + ["train.export=first"])
