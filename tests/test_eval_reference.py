"""The real side of rFID: computed once for several models, cached to an npz and reused, refused for other data."""
import numpy as np
import pytest
import torch

from latentae.errors import LatentaeError
from latentae.evaluation import evaluate
from latentae.evaluation.evaluator import evaluate_many
from latentae.evaluation.reference import load_reference, save_reference
from latentae.models import KLAutoencoder
from test_eval_metrics import TINY, TinyFeatures, fake_reconstruction_model, kodak_batches

PROTOCOL = "center square crop 96 x 96"


class CountingFeatures(TinyFeatures):
    """TinyFeatures counting the images it sees (one instance per test: the bias is drawn at random)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, x):
        self.images += len(x)
        return super().forward(x)


def two_models():
    torch.manual_seed(0)
    return {"degrade": fake_reconstruction_model(), "kl": KLAutoencoder(**TINY).eval()}


def fids(results):
    return {name: r.metrics["rfid"] for name, r in results.items()}


def test_two_models_share_the_real_features_and_equal_separate_evaluations(shared_data):
    batches = kodak_batches(shared_data, n=6)
    models = two_models()
    extractor = CountingFeatures()
    together = evaluate_many(models, batches, metrics=("rfid",), fid_feature=extractor, data_protocol=PROTOCOL)
    assert extractor.images == 6 + 2 * 6  # the real images once, each model's reconstructions once
    separate = {name: evaluate(model, batches, metrics=("rfid",), fid_feature=extractor,
                               data_protocol=PROTOCOL).metrics["rfid"] for name, model in models.items()}
    assert fids(together) == separate and len(set(separate.values())) == 2
    reference = together["kl"].fid_reference
    assert reference is together["degrade"].fid_reference and reference.count == 6
    assert "computed from" in together["kl"].protocol["fid_reference"]


def test_cached_reference_gives_identical_fid_and_skips_the_real_side(shared_data, tmp_path):
    batches = kodak_batches(shared_data, n=6)
    models = two_models()
    extractor = CountingFeatures()
    first = evaluate_many(models, batches, metrics=("rfid",), fid_feature=extractor, data_protocol=PROTOCOL)
    path = save_reference(first["degrade"].fid_reference, tmp_path / "ref")  # no .npz added
    assert path == tmp_path / "ref"
    extractor.images = 0
    again = evaluate(models["kl"], batches, metrics=("rfid",), fid_feature=extractor, data_protocol=PROTOCOL,
                     fid_reference=load_reference(path))
    assert extractor.images == 6  # the reconstructions only
    assert again.metrics["rfid"] == first["kl"].metrics["rfid"]
    assert again.protocol["fid_reference"] == f"real images' features: read from {path} (6 images)"


@pytest.mark.parametrize("change", ["images", "protocol", "extractor"])
def test_reference_from_other_data_or_features_is_refused(shared_data, tmp_path, change):
    batches = kodak_batches(shared_data, n=6)
    model = fake_reconstruction_model()
    extractor = TinyFeatures()
    reference = evaluate(model, batches, metrics=("rfid",), fid_feature=extractor,
                         data_protocol=PROTOCOL).fid_reference
    options = dict(metrics=("rfid",), fid_feature=extractor, data_protocol=PROTOCOL,
                   fid_reference=load_reference(save_reference(reference, tmp_path / "ref.npz")))
    if change == "images":
        batches = kodak_batches(shared_data, n=5)
    elif change == "protocol":
        options["data_protocol"] = "native size: center crop to a multiple of 8 px, no resize"
    else:
        with torch.no_grad():
            extractor.proj.weight.mul_(2)
    field = {"images": "n_images", "protocol": "protocol", "extractor": "extractor"}[change]
    with pytest.raises(LatentaeError, match=f"refusing the FID reference statistics read from .*{field}: the file"):
        evaluate(model, batches, **options)


def test_only_latentae_npz_references_are_read(tmp_path):
    np.savez(tmp_path / "adm.npz", mu=np.zeros(6), sigma=np.eye(6))
    with pytest.raises(LatentaeError, match="ADM-style reference .* not a latentae reference"):
        load_reference(tmp_path / "adm.npz")
    import pickle

    (tmp_path / "edm2.pkl").write_bytes(pickle.dumps({"mu": np.zeros(6)}))
    with pytest.raises(LatentaeError, match="pickles, such as edm2's, are never opened"):
        load_reference(tmp_path / "edm2.pkl")
