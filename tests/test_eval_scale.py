"""ImageNet-val-style evaluation: classes from class folders, a labels file or the shards' cls member; class-balanced
subsets; a run interrupted after a chunk resumes to the uninterrupted result; progress lines with images/s and ETA."""
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_metrics import TINY, TinyFeatures
from webdataset import TarWriter

from latentae.cli import main
from latentae.data import DataConfig, eval_loader
from latentae.errors import LatentaeError
from latentae.evaluation import evaluate
from latentae.evaluation import progress as progress_mod
from latentae.evaluation.progress import Progress
from latentae.evaluation.resume import Checkpoint
from latentae.exporting import export
from latentae.models import KLAutoencoder

CLASSES = {"n01": 3, "n02": 3, "n03": 2}  # images per class; ImageNet-like names


def png(i: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(i)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((size, size), Image.Resampling.BICUBIC).save(buf, "PNG")
    return buf.getvalue()


def images():
    """(file stem, class, png bytes) in a fixed order: classes sorted, then file names."""
    out, i = [], 0
    for label, n in CLASSES.items():
        for _ in range(n):
            out.append((f"val_{i:04d}", label, png(i)))
            i += 1
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The same 8 images as class folders, as a flat folder with a labels file, and as 2 shards with cls members."""
    root = tmp_path_factory.mktemp("imagenet")
    lines = []
    for stem, label, data in images():
        (root / "folders" / label).mkdir(parents=True, exist_ok=True)
        (root / "folders" / label / f"{stem}.png").write_bytes(data)
        (root / "flat").mkdir(exist_ok=True)
        (root / "flat" / f"{stem}.png").write_bytes(data)
        lines.append(f"{stem}.png {label}")
    (root / "val.txt").write_text("# filename label\n" + "\n".join(lines) + "\n")
    (root / "shards").mkdir()
    for shard in range(2):
        with TarWriter(str(root / "shards" / f"val-{shard}.tar")) as w:
            for stem, label, data in images()[shard::2]:
                w.write({"__key__": stem, "png": data, "cls": label.encode()})
    return root


def classes_read(source, labels, **options):
    loader = eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=3, source=str(source), labels=labels,
                         **options)
    return {key.rsplit("/", 1)[-1]: c for batch in loader for key, c in zip(batch["key"], batch["class"])}


def test_class_folders_labels_file_and_cls_shards_give_the_same_classes(dataset):
    expected = {stem: label for stem, label, _ in images()}
    assert classes_read(dataset / "folders", "folders") == expected
    assert classes_read(dataset / "flat", str(dataset / "val.txt")) == expected
    assert classes_read(dataset / "shards" / "val-{0..1}.tar", "cls") == expected
    assert classes_read(dataset / "shards" / "val-{0..1}.tar", str(dataset / "val.txt")) == expected


def test_per_class_takes_the_first_n_of_each_class_in_the_data_order(dataset):
    got = classes_read(dataset / "folders", "folders", per_class=2)
    assert got == {"val_0000": "n01", "val_0001": "n01", "val_0003": "n02", "val_0004": "n02", "val_0006": "n03",
                   "val_0007": "n03"}
    # shards interleave the images (0, 2, 4, 6 | 1, 3, 5, 7): the first two of each class in that order
    got = classes_read(dataset / "shards" / "val-{0..1}.tar", "cls", per_class=2)
    assert sorted(got) == ["val_0000", "val_0002", "val_0003", "val_0004", "val_0006", "val_0007"]
    with pytest.raises(LatentaeError, match=r"--per-class 3: 1 of 3 classes have fewer images: n03 \(2\)"):
        classes_read(dataset / "folders", "folders", per_class=3)


@pytest.mark.parametrize("case, message", [
    ("no labels", "--per-class needs the images' classes: --labels folders"),
    ("flat folder", r"8 image\(s\) without a class: .*val_0000.png is not inside a class folder"),
    ("file without one image", r"1 image\(s\) without a class: .*val_0007.png has no line in the labels file"),
    ("cls of image files", "--labels cls reads the shards' cls member"),
])
def test_missing_classes_are_one_error(dataset, tmp_path, case, message):
    partial = tmp_path / "partial.txt"
    partial.write_text("\n".join((dataset / "val.txt").read_text().splitlines()[:-1]))
    source, labels = {"no labels": (dataset / "folders", None), "flat folder": (dataset / "flat", "folders"),
                      "file without one image": (dataset / "flat", str(partial)),
                      "cls of image files": (dataset / "flat", "cls")}[case]
    with pytest.raises(LatentaeError, match=message):
        classes_read(source, labels, per_class=1)


class Interrupt(Exception):
    pass


def interrupt_after(monkeypatch, chunks: int):
    """Checkpoint.save raises after writing `chunks` chunks: a run killed between chunks."""
    calls = []
    save = Checkpoint.save

    def save_then_stop(self, state):
        save(self, state)
        calls.append(1)
        if len(calls) == chunks:
            raise Interrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)


def shard_run(dataset, model, resume, **options):
    loader = eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=3,
                         source=str(dataset / "shards" / "val-{0..1}.tar"), labels="cls")
    torch.manual_seed(0)  # TinyFeatures' bias: the same features in every run
    return evaluate(model, loader, metrics=("psnr", "ssim", "rfid"), fid_feature=TinyFeatures(), resume=resume,
                    examples=2, **options)


def kl(seed=0):
    torch.manual_seed(seed)
    return KLAutoencoder(**TINY).eval()


def test_a_resumed_run_equals_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
    whole = shard_run(dataset, kl(), tmp_path / "whole")
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupt):
        shard_run(dataset, kl(), tmp_path / "resumed")
    monkeypatch.undo()
    model = kl()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    resumed = shard_run(dataset, model, tmp_path / "resumed")
    assert sum(seen) == 4  # only the second shard was evaluated again
    assert resumed.metrics == whole.metrics and resumed.per_image == whole.per_image
    assert resumed.image_keys == whole.image_keys and resumed.image_classes == whole.image_classes
    assert resumed.image_classes == [images()[i][1] for i in (0, 2, 4, 6, 1, 3, 5, 7)]  # the shards' order
    assert torch.equal(resumed.examples["reconstruction"], whole.examples["reconstruction"])
    assert resumed.metrics["rfid"] > 0 and resumed.n_images == 8


def test_resume_refuses_another_model_or_metric(dataset, tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupt):
        shard_run(dataset, kl(), tmp_path / "resume")
    monkeypatch.undo()
    with pytest.raises(LatentaeError, match=r"was written by another evaluation \(different models\): use another "
                                            r"--output, or delete .*resume to start over"):
        shard_run(dataset, kl(seed=1), tmp_path / "resume")
    with pytest.raises(LatentaeError, match=r"different fid_extractor\)"):
        loader = eval_loader(DataConfig(resolution=32, num_workers=0), batch_size=3,
                             source=str(dataset / "shards" / "val-{0..1}.tar"), labels="cls")
        other = TinyFeatures()
        torch.nn.init.zeros_(other.proj.bias)
        evaluate(kl(), loader, metrics=("psnr", "ssim", "rfid"), fid_feature=other, resume=tmp_path / "resume",
                 examples=2)


def test_eval_command_resumes_and_writes_classes(dataset, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = export(KLAutoencoder(**TINY).eval(), tmp_path / "kl")
    args = ["eval", "--model", str(model), "--data", str(dataset / "folders"), "--resolution", "32",
            "--num-workers", "0", "--precision", "fp32", "--metrics", "psnr,ssim", "--labels", "folders",
            "--per-class", "2", "--batch-size", "2", "--grids", "0"]
    monkeypatch.setattr("latentae.evaluation.evaluator.CHUNK_IMAGES", 2)
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    assert main([*args, "--output", str(tmp_path / "whole")]) == 0
    printed = capsys.readouterr()
    assert "labels folders: 3 classes, 6 images (--per-class 2: the first of each class in the data's order)" \
        in printed.out
    assert "eval: 2/6 images (33%), " in printed.err and "images/s, ETA " in printed.err
    assert not (tmp_path / "whole" / "resume").exists()  # done: nothing left to resume
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupt):
        main([*args, "--output", str(tmp_path / "resumed")])
    assert (tmp_path / "resumed" / "resume" / "rank0-of-1.pt").exists()
    monkeypatch.undo()
    monkeypatch.setattr("latentae.evaluation.evaluator.CHUNK_IMAGES", 2)
    capsys.readouterr()
    assert main([*args, "--output", str(tmp_path / "resumed")]) == 0
    assert "resuming after 2 of 3 chunks (4 images) evaluated by an earlier run" in capsys.readouterr().err
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("whole", "resumed")]
    assert reports[0]["metrics"] == reports[1]["metrics"] and reports[0]["n_images"] == 6
    csv = [(tmp_path / name / "per_image.csv").read_text() for name in ("whole", "resumed")]
    assert csv[0] == csv[1] and csv[0].splitlines()[:2] == ["key,class,psnr,ssim", csv[0].splitlines()[1]]
    assert csv[0].splitlines()[1].startswith("n01/val_0000,n01,")
    shutil.rmtree(tmp_path / "whole")


def test_progress_prints_rate_and_eta_periodically_not_per_image(monkeypatch):
    monkeypatch.setattr(progress_mod, "EVERY_S", 10.0)
    now = [0.0]
    out = io.StringIO()
    bar = Progress(1000, rank=1, ranks=2, done=100, stream=out, clock=lambda: now[0])
    for _ in range(30):  # 30 batches of 10 images, 1 s each
        now[0] += 1
        bar.update(10)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["eval [process 2/2]: 200/1000 images (20%), 10.0 images/s, ETA 1m20s",
                         "eval [process 2/2]: 300/1000 images (30%), 10.0 images/s, ETA 1m10s",
                         "eval [process 2/2]: 400/1000 images (40%), 10.0 images/s, ETA 1m00s"]
    assert lines[3] == "eval [process 2/2]: 400/1000 images (40%), 10.0 images/s, ETA 1m00s, 0m30s in all"
    assert len(lines) == 4
