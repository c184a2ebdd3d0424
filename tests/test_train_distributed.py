"""Two processes (torchrun, gloo, CPU): gradients are synchronized for both models, both optimizers step every
iteration, the learning rate is not scaled by the process count, and a checkpoint resumes on both ranks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from test_losses_alignment import dinov2_dir  # noqa: F401 (fixture)

HERE = Path(__file__).resolve().parent
REGULARIZERS = ["loss.equivariance.weight=1", "loss.equivariance.p=1", "loss.scale_equivariance.weight=0.5",
                "loss.latent_noise.weight=0.5"]
VF = ["loss.vf.weight=0.1", "loss.vf.model={dinov2_dir}"]  # the tiny DINOv2 of tests/test_losses_alignment.py


@pytest.mark.slow
# batch: the G pass's cat([real, fake]) on copies of D's buffers must backprop under DDP (whose forward
# re-broadcasts the buffers). Per-rank running statistics may differ: D always runs in train mode, unused.
# regularizers: the latent regularizers decode again through the plain module, outside the DDP wrapper, between
# its forward and the same backward; ranks (different data, different random transforms) must stay identical.
# loss.vf's projection, trained by the generator's optimizer outside the model, is synchronized by its own wrapper.
@pytest.mark.parametrize("norm, extra", [("group", []), ("batch", []), ("group", REGULARIZERS + VF)],
                         ids=["group", "batch", "regularizers"])
def test_two_process_training(tmp_path, demo_images, norm, extra, request):
    extra = [e.format(dinov2_dir=request.getfixturevalue("dinov2_dir")) if "{" in e else e for e in extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "dist_train_worker.py"), str(tmp_path / "run"), str(demo_images), str(tmp_path),
           f"loss.disc.norm={norm}", *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    preset = yaml.safe_load((HERE.parent / "configs" / "tiny-kl.yaml").read_text())["train"]
    lr, warmup_steps = preset["lr"], preset["warmup_steps"]
    for report in reports:
        assert report["world_size"] == 2
        for i, step in enumerate(report["steps"]):
            assert step["different_data"], f"step {i}: ranks saw the same batch, the test would prove nothing"
            assert step["generator_identical"] and step["discriminator_identical"], f"step {i}: ranks diverged"
            assert step["generator_stepped"] and step["discriminator_stepped"], f"step {i}: an optimizer idled"
            assert step["optimizer_steps"] == [i + 1, i + 1]
        lrs = [s["lr"] for s in report["steps"]]
        warmup = [lr * (i + 1) / warmup_steps for i in range(3)]
        assert lrs == pytest.approx(warmup)  # the configured lr's warm-up, not x2 for two processes
        assert report["resumed_step"] == 3 and report["resumed_identical"]
        assert report["checkpoint"] == "step-00000003"
