"""Named FID protocols (latentae/evaluation/fid_protocols.py): on the same images and the same weight file, each
equals its library's own FID, computed by that library from PNG files. The weight files are random-init networks
saved in each library's own format where it looks for them (torch's hub cache, or a path), their batch norms
calibrated on random images so that features stay O(1) through the ~90 layers. The images are 40 x 48 (not
square, not 299: every resize runs)."""
from unittest import mock

import pytest
import torch
from PIL import Image
from test_eval_metrics import degrade, fake_reconstruction_model

from latentae.evaluation import evaluate
from latentae.evaluation.fid_protocols import PROTOCOLS
from latentae.evaluation.metrics import FIDMetric, to_uint8

N_IMAGES, H, W = 6, 40, 48
# The libraries take scipy's sqrtm of the float64 covariances, torchmetrics the eigenvalues of their product;
# features are float32 either way, summed in another order. Measured: 1.3e-6 (torch-fidelity), 3.1e-6
# (pytorch-fid), 1.1e-6 (clean-fid) relative; the other resize of the default protocol moves the FID by over 1e-2.
RTOL = 1e-4


def calibrate_batch_norms(net: torch.nn.Module, forward) -> None:
    """Batch-norm statistics of the net's own activations on random images (cumulative average)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        forward(torch.randint(0, 256, (4, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    net.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Smooth random images in [-1, 1] (upsampled noise): resize filters differ on them."""
    noise = torch.rand(N_IMAGES, 3, H // 4, W // 4, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(noise, size=(H, W), mode="bicubic").clamp(0, 1) * 2 - 1


@pytest.fixture(scope="module")
def folders(images, tmp_path_factory):
    """The real images and their reconstructions (degrade) as PNG folders, and as uint8 tensors."""
    root = tmp_path_factory.mktemp("fid-images")
    real, fake = to_uint8(images), to_uint8(degrade(images))
    for name, batch in (("real", real), ("fake", fake)):
        (root / name).mkdir()
        for i, image in enumerate(batch):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
    return root / "real", root / "fake", real, fake


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A torch hub cache holding random-init Inception files in torch-fidelity's and pytorch-fid's formats."""
    from pytorch_fid import inception as pytorch_fid_inception
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    home = tmp_path_factory.mktemp("torch")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    calibrate_batch_norms(net, net)
    torch.save(net.state_dict(), checkpoints / "weights-inception-2015-12-05-6726825d.pth")

    with mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch("torchvision.models.inception.Inception3.load_state_dict", lambda self, state: None):
        net = pytorch_fid_inception.fid_inception_v3()
    calibrate_batch_norms(net, lambda x: net(x.float() / 127.5 - 1))
    torch.save(net.state_dict(), checkpoints / "pt_inception-2015-12-05-6726825d.pth")
    return home


def test_torch_fidelity_protocol_through_evaluate_equals_torch_fidelity(torch_home, folders, images, monkeypatch):
    torch_fidelity = pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    real_dir, fake_dir, _, _ = folders
    path = torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    expected = torch_fidelity.calculate_metrics(input1=str(fake_dir), input2=str(real_dir), fid=True, cuda=False,
                                                feature_extractor_weights_path=str(path), verbose=False,
                                                save_cpu_ram=True)["frechet_inception_distance"]
    batches = [{"image": images[:4], "key": list("abcd")}, {"image": images[4:], "key": list("ef")}]
    result = evaluate(fake_reconstruction_model(), batches, metrics=("rfid",), fid_feature="torch-fidelity")
    assert result.metrics["rfid"] == pytest.approx(expected, rel=RTOL)
    card = result.protocol["metrics"]["rfid"]
    assert "'torch-fidelity'" in card and "RAE" in card and "sha256" in card
    assert result.protocol["weight_files"]["rfid"] == [str(path)]
    # the default protocol (torchmetrics' antialiased torch bilinear) resizes otherwise: another number
    default = FIDMetric("torchmetrics")
    default.update(*folders[2:])
    assert abs(default.compute() - expected) > 100 * RTOL * expected


def test_pytorch_fid_protocol_equals_pytorch_fid(torch_home, folders, monkeypatch):
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # where pytorch-fid's load_state_dict_from_url looks
    real_dir, fake_dir, real, fake = folders
    expected = fid_score.calculate_fid_given_paths([str(real_dir), str(fake_dir)], batch_size=N_IMAGES,
                                                   device="cpu", dims=2048, num_workers=0)
    metric = FIDMetric("pytorch-fid")  # found by latentae.weights in the same cache
    metric.update(real[:4], fake[:4])
    metric.update(real[4:], fake[4:])
    assert metric.compute() == pytest.approx(expected, rel=RTOL)
    assert "LightningDiT" in metric.describe() and metric.weight_files == [
        str(torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth")]


class StandInInception(torch.nn.Module):
    """The interface of StyleGAN2-ADA's TorchScript Inception that clean-fid uses: `layers` on [-1, 1] 299 x 299
    images -> [B, 2048, 1, 1] (a small random conv net here), and forward(x, return_features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, stride=4), torch.nn.ReLU(),
                                          torch.nn.Conv2d(64, 2048, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128) / 128).flatten(1)


def test_clean_fid_protocol_equals_clean_fid(folders, tmp_path):
    cleanfid = pytest.importorskip("cleanfid.fid")
    from cleanfid.inception_torchscript import InceptionV3W

    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(StandInInception()).save(str(path))
    real_dir, fake_dir, real, fake = folders
    expected = cleanfid.compute_fid(str(real_dir), str(fake_dir), mode="clean", device=torch.device("cpu"),
                                    num_workers=0, batch_size=N_IMAGES, verbose=False, use_dataparallel=False,
                                    custom_feat_extractor=InceptionV3W(str(tmp_path), download=False))
    metric = FIDMetric("clean-fid", path)
    metric.update(real, fake)
    assert metric.compute() == pytest.approx(expected, rel=RTOL)
    assert "clean-fid" in metric.describe() and "sha256" in metric.describe()


def test_missing_protocol_weights_are_unavailable_naming_the_file(offline_cache, images):
    result = evaluate(fake_reconstruction_model(), [{"image": images[:2], "key": ["a", "b"]}], metrics=("psnr", "rfid"),
                      fid_feature="pytorch-fid")
    message = result.unavailable["rfid"]
    assert "pt_inception-2015-12-05-6726825d.pth" in message and str(offline_cache) in message
    assert "latentae fetch-weights --only pt-inception" in message and "psnr" in result.metrics


def test_every_protocol_names_its_library_and_users():
    assert set(PROTOCOLS) == {"torchmetrics", "torch-fidelity", "pytorch-fid", "clean-fid"}
    for p in PROTOCOLS.values():
        assert p.used_by and p.preprocessing and p.library
    assert PROTOCOLS["torchmetrics"].weights == PROTOCOLS["torch-fidelity"].weights == "inception"
