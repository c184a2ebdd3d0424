"""`latentae shards`: folders / images / tars -> webdataset shards, and reading them back unchanged."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

import latentae.data.shards as shards_module
from latentae.cli import main
from latentae.data import DataConfig, eval_loader, read_shard
from latentae.data.shards import write_shards
from latentae.errors import LatentaeError


def image_bytes(w, h, fmt="PNG", mode="RGB", seed=0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr if len(mode) > 1 else arr[..., 0], mode).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def photos(tmp_path):
    """photos/{a.png, b.jpg, c.v2.png, sub/d.png, notes.txt}: mixed sizes and formats."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(24, 16, seed=1))
    (root / "b.jpg").write_bytes(image_bytes(20, 30, "JPEG", seed=2))
    (root / "c.v2.png").write_bytes(image_bytes(16, 16, mode="RGBA", seed=3))
    (root / "sub" / "d.png").write_bytes(image_bytes(40, 18, seed=4))
    (root / "notes.txt").write_text("not an image")
    return root


def tar_members(path):
    with tarfile.open(path) as tf:
        return [m.name for m in tf.getmembers()]


def test_folder_to_shards_to_reader_gives_the_same_pixels(photos, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", str(photos), "-o", str(out), "--samples-per-shard", "3", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("wrote 4 samples in 2 shards") and "data-{00000..00001}.tar" in lines[0]
    assert "ignored 1 non-image files in folders (.txt: 1)" in lines
    assert sorted(p.name for p in out.iterdir()) == ["data-00000.tar", "data-00001.tar"]
    assert tar_members(out / "data-00000.tar")[:2] == ["photos/a.json", "photos/a.png"]

    # whole images: the stored bytes decode to exactly the original pixels, json describes them
    stored = {s["key"]: s for url in sorted(out.glob("*.tar")) for s in read_shard(str(url), resolution=None)}
    assert sorted(stored) == ["photos/a", "photos/b", "photos/c_v2", "photos/sub/d"]
    for key, name in [("photos/a", "a.png"), ("photos/b", "b.jpg"), ("photos/sub/d", "sub/d.png")]:
        original = np.asarray(Image.open(photos / name).convert("RGB"), dtype=np.float32) / 127.5 - 1
        assert torch.equal(stored[key]["image"], torch.from_numpy(original).permute(2, 0, 1))
        meta = json.loads(stored[key]["extras"]["json"])
        assert meta == {"source": str(photos / name), "width": original.shape[1], "height": original.shape[0]}

    # and the evaluation reader gives identical batches from the folder and from the shards
    def by_key(source):
        cfg = DataConfig(resolution=16, num_workers=0)
        return {k: img for b in eval_loader(cfg, batch_size=3, source=source) for k, img in zip(b["key"], b["image"])}

    from_folder, from_shards = by_key(str(photos)), by_key(str(out))
    assert sorted(from_folder) == ["a", "b", "c_v2", "sub/d"]
    for key, img in from_folder.items():
        assert torch.equal(img, from_shards[f"photos/{key}"])


def test_output_is_deterministic_and_shuffle_follows_the_seed(photos, tmp_path):
    def run(name, seed=None):
        report = write_shards([str(photos)], tmp_path / name, samples_per_shard=100, shuffle_seed=seed,
                              max_pixels=10**8, progress=False)
        return (tmp_path / name / report.shards[0]).read_bytes()

    assert run("a") == run("b")  # byte-identical: fixed member order, mtime, owner
    assert run("s1", seed=1) == run("s1b", seed=1)
    orders = set()
    for seed in range(6):
        run(f"shuffled{seed}", seed=seed)
        orders.add(tuple(tar_members(tmp_path / f"shuffled{seed}" / "data-00000.tar")))
    unshuffled = sorted(tar_members(tmp_path / "a" / "data-00000.tar"))
    assert len(orders) > 1 and all(sorted(order) == unshuffled for order in orders)


def test_bytes_per_shard_splits_shards(photos, tmp_path):
    report = write_shards([str(photos)], tmp_path / "out", bytes_per_shard=3000, max_pixels=10**8, progress=False)
    sizes = [len(tar_members(tmp_path / "out" / s)) // 2 for s in report.shards]
    assert sum(sizes) == 4 and len(sizes) > 1


def test_max_side_reencodes_large_images(tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    (src / "wide.jpg").write_bytes(image_bytes(300, 200, "JPEG"))
    (src / "alpha.png").write_bytes(image_bytes(90, 120, mode="RGBA"))
    (src / "small.png").write_bytes(image_bytes(50, 40))
    original_small = (src / "small.png").read_bytes()
    write_shards([str(src)], tmp_path / "out", max_side=100, max_pixels=10**8, progress=False)
    with tarfile.open(tmp_path / "out" / "data-00000.tar") as tf:
        names = tf.getnames()
        metas = {n: json.loads(tf.extractfile(n).read()) for n in names if n.endswith(".json")}
        small = tf.extractfile("big/small.png").read()
    assert "big/wide.jpg" in names and "big/alpha.png" in names
    assert (metas["big/wide.json"]["width"], metas["big/wide.json"]["height"]) == (100, 67)
    assert (metas["big/alpha.json"]["width"], metas["big/alpha.json"]["height"]) == (75, 100)
    assert small == original_small  # under the limit: original bytes
    samples = {s["key"]: s["image"] for s in read_shard(str(tmp_path / "out" / "data-00000.tar"), resolution=None)}
    assert samples["big/wide"].shape == (3, 67, 100) and samples["big/alpha"].shape == (3, 100, 75)


def test_tar_sources_are_repacked_and_bad_files_reported(tmp_path, capsys):
    old = tmp_path / "old.tar"
    with TarWriter(str(old), encoder=False) as w:
        w.write({"__key__": "000", "jpg": image_bytes(16, 16, "JPEG"), "txt": b"a caption"})
        w.write({"__key__": "001", "txt": b"no image here"})
        w.write({"__key__": "002", "png": b"garbage bytes"})
        w.write({"__key__": "003", "webp": image_bytes(12, 12, "WEBP")})
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(image_bytes(64, 64, "JPEG")[:400])
    (folder / "empty.png").write_bytes(b"")
    (folder / "ok.png").write_bytes(image_bytes(8, 8))
    out = tmp_path / "out"
    assert main(["shards", str(old), str(folder), "-o", str(out), "-q", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("wrote 3 samples in 1 shard ")
    assert "skipped 4 files:" in text
    assert f"{old}:001: no_image (members: txt)" in text
    assert f"{old}:002.png: decode_error" in text
    assert f"{folder / 'broken.jpg'}: decode_error" in text
    assert f"{folder / 'empty.png'}: empty" in text
    keys = [s["key"] for s in read_shard(str(out / "data-00000.tar"), resolution=8)]
    assert keys == ["old/000", "old/003", "in/ok"]


def test_interrupted_run_leaves_no_partial_shard(photos, tmp_path, monkeypatch):
    real = shards_module._process
    calls = []

    def failing(item, **kw):
        calls.append(item)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(item, **kw)

    monkeypatch.setattr(shards_module, "_process", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_shards([str(photos)], out, samples_per_shard=2, max_pixels=10**8, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["data-00000.tar"]  # complete, renamed; no .tmp
    assert len(tar_members(out / "data-00000.tar")) == 4


def test_existing_shards_need_overwrite(photos, tmp_path, capsys):
    out = tmp_path / "out"
    write_shards([str(photos)], out, samples_per_shard=1, max_pixels=10**8, progress=False)
    assert len(list(out.glob("*.tar"))) == 4
    assert main(["shards", str(photos), "-o", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["shards", str(photos), "-o", str(out), "-q", "--overwrite"]) == 0
    assert [p.name for p in out.glob("*.tar")] == ["data-00000.tar"]  # stale shards removed
    with pytest.raises(LatentaeError, match="not found"):
        write_shards([str(tmp_path / "missing")], out, max_pixels=10**8, overwrite=True, progress=False)
    assert main(["shards", str(photos), "-o", str(out), "--seed", "3", "--overwrite"]) == 2  # needs --shuffle
