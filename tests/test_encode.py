"""`latentae encode` / `decode`: latents equal the model's own, exactly once across shards and ranks, resumable,
and bad input gives one clear message."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from conftest import assert_close_across_kernels, weight_layers
from latentae.cli import main
from latentae.data import read_shard
from latentae.data.transforms import to_pil
from latentae.errors import LatentaeError
from latentae.exporting import export
from latentae.latents import decode_encoded, encode_dataset, iter_encoded, read_manifest, write_manifest
from latentae.models import KLAutoencoder, VQTokenizer

RES = 16


def tiny_kl(seed=0) -> KLAutoencoder:
    torch.manual_seed(seed)
    return KLAutoencoder(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         sample_size=RES).eval()


def image_bytes(seed: int, size=(20, 18), fmt="PNG") -> bytes:
    """A smooth random image (a blurred colour field: more like a photo than per-pixel noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def make_shards(folder, n_shards, per_shard, *, bad=()) -> tuple[str, list[str]]:
    """n_shards tars `part-0000i.tar` of per_shard PNG samples with a caption; (brace pattern, good keys).
    Keys in `bad` get garbage image bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(n_shards):
        with TarWriter(str(folder / f"part-{i:05d}.tar"), encoder=False) as w:
            for j in range(per_shard):
                key = f"s{i}-{j:02d}"
                data = b"not an image" if key in bad else image_bytes(100 * i + j)
                w.write({"__key__": key, "png": data, "txt": f"caption {key}".encode()})
                keys += [] if key in bad else [key]
    return str(folder / f"part-{{00000..{n_shards - 1:05d}}}.tar"), keys


def source_images(pattern: str) -> dict[str, torch.Tensor]:
    from latentae.data import expand_urls

    return {s["key"]: s["image"] for url in expand_urls(pattern) for s in read_shard(url, resolution=RES)}


def output_keys(folder) -> list[str]:
    return [s["key"] for s in iter_encoded(str(folder))]


def test_latents_equal_the_models_and_decode_equals_reconstruction(tmp_path):
    model = tiny_kl()
    pattern, keys = make_shards(tmp_path / "in", 2, 5)
    report = encode_dataset(model, pattern, tmp_path / "out", batch_size=3, workers=0, resolution=RES)
    assert report.written == 10 and report.shards_written == ["part-00000", "part-00001"]
    images = source_images(pattern)
    samples = list(iter_encoded(str(tmp_path / "out")))
    assert [s["key"] for s in samples] == keys
    with torch.no_grad():
        for s in samples:
            posterior = model.posterior(images[s["key"]][None])
            expected = torch.cat([posterior.mean, posterior.logvar], 1)[0]
            assert s["latents"].dtype == np.float32 and s["latents"].shape == (8, RES // 2, RES // 2)
            # batch 3 there, 1 here: other oneDNN kernels
            assert_close_across_kernels(s["latents"], expected, layers=weight_layers(model.encoder, model.quant_conv))
            assert s["meta"] == {"key": s["key"], "url": str(tmp_path / "in" / f"part-0000{s['key'][1]}.tar"),
                                 "shard": s["shard"], "store": "both"}
    decoded = {d["key"]: d["image"] for d in decode_encoded(model, str(tmp_path / "out"), batch_size=4)}
    assert list(decoded) == keys
    with torch.no_grad():
        for key, image in decoded.items():
            # batch 4 there, 1 here: other oneDNN kernels
            assert_close_across_kernels(image, model.decode(model.encode(images[key][None]))[0],
                                        layers=weight_layers(model))

    # the CLI writes <output>/<shard>/<key>.png: the model's reconstruction as 8-bit
    export(model, tmp_path / "model")
    assert main(["decode", "--model", str(tmp_path / "model"), "--latents", str(tmp_path / "out"),
                 "--output", str(tmp_path / "png"), "--precision", "fp32", "-q"]) == 0  # compared with fp32 below
    png = np.asarray(Image.open(tmp_path / "png" / "part-00001" / "s1-03.png"), dtype=np.int16)
    expected = np.asarray(to_pil(decoded["s1-03"]), dtype=np.int16)
    # other batch sizes (other kernels): a value ~1e-6 from a rounding boundary may round to the next 8-bit level
    assert png.shape == (RES, RES, 3) and np.abs(png - expected).max() <= 1


def test_captions_and_source_key_travel_with_the_latents(tmp_path):
    pattern, _ = make_shards(tmp_path / "in", 1, 2)
    encode_dataset(tiny_kl(), pattern, tmp_path / "out", workers=0)
    with tarfile.open(tmp_path / "out" / "part-00000.tar") as tf:
        names = sorted(tf.getnames())
        caption = tf.extractfile("s0-01.txt").read()
    assert names == ["s0-00.json", "s0-00.latents.npy", "s0-00.txt", "s0-01.json", "s0-01.latents.npy",
                     "s0-01.txt"]
    assert caption == b"caption s0-01"


def test_store_mean_sample_and_float16(tmp_path):
    model = tiny_kl()
    pattern, keys = make_shards(tmp_path / "in", 1, 4)
    images = source_images(pattern)
    encode_dataset(model, pattern, tmp_path / "mean", store="mean", storage_dtype="float16", workers=0,
                   resolution=RES)
    with torch.no_grad():
        for s in iter_encoded(str(tmp_path / "mean")):
            assert s["latents"].dtype == np.float16 and s["latents"].shape == (4, RES // 2, RES // 2)
            mean = model.encode(images[s["key"]][None])[0]
            # float16 storage rounds by up to 2^-11 = 4.9e-4 relative; kernel differences (~1e-6) are far below
            torch.testing.assert_close(torch.from_numpy(s["latents"]).float(), mean, atol=2e-3, rtol=2e-3)
    # a sample's noise depends on (seed, key) only: batching does not change it, the seed does
    encode_dataset(model, pattern, tmp_path / "a", store="sample", batch_size=1, workers=0, resolution=RES)
    encode_dataset(model, pattern, tmp_path / "b", store="sample", batch_size=4, workers=0, resolution=RES)
    encode_dataset(model, pattern, tmp_path / "c", store="sample", seed=1, workers=0, resolution=RES)
    a = {s["key"]: s["latents"] for s in iter_encoded(str(tmp_path / "a"))}
    b = {s["key"]: s["latents"] for s in iter_encoded(str(tmp_path / "b"))}
    c = {s["key"]: s["latents"] for s in iter_encoded(str(tmp_path / "c"))}
    means = {s["key"]: s["latents"] for s in iter_encoded(str(tmp_path / "mean"))}
    for key in keys:
        # batch 1 vs 4: the same noise on means and variances that other oneDNN kernels rounded differently
        assert_close_across_kernels(a[key], b[key], layers=weight_layers(model.encoder, model.quant_conv))
        assert not np.allclose(a[key], c[key])
        assert not np.allclose(a[key], means[key].astype(np.float32), atol=1e-2)


def test_tokenizer_writes_tokens_and_decodes_them(tmp_path):
    torch.manual_seed(0)
    model = VQTokenizer(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=RES, quantizer={"kind": "vq", "codebook_size": 32}).eval()
    pattern, keys = make_shards(tmp_path / "in", 1, 3)
    encode_dataset(model, pattern, tmp_path / "out", workers=0, resolution=RES)
    images = source_images(pattern)
    samples = list(iter_encoded(str(tmp_path / "out")))
    decoded = {d["key"]: d["image"] for d in decode_encoded(model, str(tmp_path / "out"))}
    with torch.no_grad():
        for s in samples:
            tokens = model.tokenize(images[s["key"]][None])[0]
            assert s["tokens"].dtype == np.int32 and s["tokens"].shape == (RES // 2, RES // 2)
            # exact although encode batches the images (other kernels than batch 1 here): the nearest code wins by
            # >= 1.2e-4 on these latents, 30x what other kernels can move the two distances apart (2 x ~2e-6)
            assert torch.equal(torch.from_numpy(s["tokens"]).long(), tokens)
            assert_close_across_kernels(decoded[s["key"]], model.detokenize(tokens[None])[0],
                                        layers=weight_layers(model.post_quant_conv, model.decoder))


def test_ranks_split_shards_and_manifest_counts_everything_once(tmp_path):
    model = tiny_kl()
    pattern, keys = make_shards(tmp_path / "in", 5, 3, bad={"s2-01"})
    out = tmp_path / "out"
    r1 = encode_dataset(model, pattern, out, rank=1, world_size=2, workers=2, batch_size=2)
    r0 = encode_dataset(model, pattern, out, rank=0, world_size=2, workers=2, batch_size=2)
    assert r0.shards_written == ["part-00000", "part-00002", "part-00004"]
    assert r1.shards_written == ["part-00001", "part-00003"]
    manifest = write_manifest(out, r0, pattern)
    assert sorted(output_keys(out)) == sorted(keys) and len(keys) == 14
    assert manifest["written"] == 14 and manifest["skipped"] == {"decode_error": 1}
    assert manifest["shards"]["part-00002"]["written"] == 2
    assert read_manifest(out) == manifest
    assert manifest["content"] == "latents.npy:both" and manifest["config"]["latent_channels"] == 4


def test_rerun_skips_finished_shards_and_replaces_leftovers(tmp_path):
    """A killed run leaves finished shards and a partial .tmp: the rerun writes only the missing shards."""
    model = tiny_kl()
    pattern, keys = make_shards(tmp_path / "in", 4, 3)
    out = tmp_path / "out"
    encode_dataset(model, "%s" % (tmp_path / "in" / "part-00001.tar"), out, workers=0)  # one shard finished
    (out / "part-00002.tar.tmp").write_bytes(b"half a tar")  # one in progress when killed
    finished = (out / "part-00001.tar").stat().st_mtime_ns
    report = encode_dataset(model, pattern, out, workers=0)
    assert report.shards_written == ["part-00000", "part-00002", "part-00003"]
    assert report.shards_done_before == ["part-00001"]
    assert (out / "part-00001.tar").stat().st_mtime_ns == finished
    assert not list(out.glob("*.tmp"))
    assert sorted(output_keys(out)) == sorted(keys)
    # the same weights from another path, in another memory layout, with new scaling constants: nothing to do
    model.register_to_config(scaling_factor=0.5, shift_factor=0.1)
    again = encode_dataset(model, pattern, out, workers=0, channels_last=True, model_source="elsewhere")
    assert again.shards_written == [] and len(again.shards_done_before) == 4
    # different settings or weights must not be mixed into the same output
    with pytest.raises(LatentaeError, match="different settings.*content"):
        encode_dataset(model, pattern, out, store="mean", workers=0)
    with pytest.raises(LatentaeError, match=r"different settings \(weights\)"):
        encode_dataset(tiny_kl(seed=5), pattern, out, workers=0)


def test_folder_is_grouped_into_image_shards(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / ("sub" if i % 2 else ".") / f"img{i}.png").write_bytes(image_bytes(i))
    report = encode_dataset(tiny_kl(), str(folder), tmp_path / "out", images_per_shard=2, workers=0)
    assert report.shards_written == ["images-00000", "images-00001", "images-00002"]
    assert output_keys(tmp_path / "out") == ["img0", "img2", "img4", "sub/img1", "sub/img3"]


def test_bf16_latents_are_close_to_fp32(tmp_path):
    model = tiny_kl()
    pattern, _ = make_shards(tmp_path / "in", 1, 4)
    encode_dataset(model, pattern, tmp_path / "fp32", store="mean", workers=0)
    encode_dataset(model, pattern, tmp_path / "bf16", store="mean", precision="bf16", channels_last=True,
                   workers=0)
    a = np.stack([s["latents"] for s in iter_encoded(str(tmp_path / "fp32"))])
    b = np.stack([s["latents"] for s in iter_encoded(str(tmp_path / "bf16"))])
    # bf16 rounds each layer's inputs, weights and outputs by up to 2^-8 (3.9e-3) relative, at random over the layers:
    # measured 1.0% here (AVX-512 with and without bf16 instructions, AVX2); a wrong op or layout is off by ~100%
    bound = 3 * 2**-8 * weight_layers(model.encoder, model.quant_conv) ** 0.5
    assert 0 < np.linalg.norm(b - a) / np.linalg.norm(a) < bound


def test_cli_encode_and_bad_input(tmp_path, capsys):
    model_dir = export(tiny_kl(), tmp_path / "model")
    pattern, keys = make_shards(tmp_path / "in", 2, 2)
    (tmp_path / "in" / "part-00002.tar").write_bytes(b"\x00garbage" * 100)  # a corrupt shard
    pattern = pattern.replace("00001}", "00002}")
    out = tmp_path / "out"
    assert main(["encode", "--model", str(model_dir), "--data", pattern, "--output", str(out), "-q",
                 "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "encoded 4 images into 3 shards" in captured.out
    warning = [line for line in captured.err.splitlines() if "part-00002" in line]
    assert len(warning) == 1 and "damaged" in warning[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == 4 and manifest["skipped"] == {"read_error": 1}
    assert manifest["model"] == str(model_dir) and manifest["config"]["block_out_channels"] == [32, 64]

    def error(*argv) -> str:
        assert main(["encode", *argv, "-q"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "not a model directory" in error("--model", str(tmp_path / "in"), "--data", pattern, "--output",
                                            str(tmp_path / "o2"))
    (tmp_path / "empty").mkdir()
    assert "holds no images" in error("--model", str(model_dir), "--data", str(tmp_path / "empty"), "--output",
                                      str(tmp_path / "o3"))
    assert "not found" in error("--model", str(model_dir), "--data", str(tmp_path / "nope.tar"), "--output",
                                str(tmp_path / "o4"))
    assert "would overwrite the input" in error("--model", str(model_dir), "--data", pattern, "--output",
                                                str(tmp_path / "in"))
    assert "--seed only takes effect with --store sample" in error(
        "--model", str(model_dir), "--data", pattern, "--output", str(tmp_path / "o5"), "--seed", "3")


def native_model(seed=0) -> KLAutoencoder:
    """Downsamples by 4 (three levels); its sample_size 16 is a tiling hint, not a data resolution."""
    torch.manual_seed(seed)
    return KLAutoencoder(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                         sample_size=16).eval()


# name -> (width, height): two crop to 20 x 16, two to 16 x 24, one is below the factor
NATIVE_SIZES = {"wide": (23, 18), "tall": (18, 27), "wide2": (22, 17), "dot": (3, 3), "tall2": (19, 26)}


def native_crop(data: bytes, multiple: int) -> torch.Tensor:
    """The center crop to a multiple of `multiple`, cut in numpy, as the model's [-1, 1] input [3, h, w]."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    h, w = pixels.shape[:2]
    ch, cw = h - h % multiple, w - w % multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return torch.from_numpy(pixels[top:top + ch, left:left + cw].copy()).permute(2, 0, 1).float() / 127.5 - 1


def test_default_encodes_each_image_at_native_size(tmp_path):
    """No --resolution: every image at its own size, center-cropped to a multiple of the model's downsampling
    factor (no resize, whatever sample_size says), batched by size; the manifest says so; decode and a resumed
    run handle it."""
    data = {name: image_bytes(i, size) for i, (name, size) in enumerate(NATIVE_SIZES.items())}
    tar = str(tmp_path / "mixed.tar")
    with TarWriter(tar, encoder=False) as w:
        for name, png in data.items():
            w.write({"__key__": name, "png": png})
    model, out = native_model(), tmp_path / "out"
    report = encode_dataset(model, tar, out, batch_size=2, workers=0)
    manifest = write_manifest(out, report, tar)
    assert manifest["resolution"] == "native" and "center crop to a multiple of 4 px, no resize" in manifest["crop"]
    assert manifest["written"] == 4 and manifest["skipped"] == {"too_small": 1}  # 3 x 3 has no crop
    latents = {s["key"]: s["latents"] for s in iter_encoded(str(out))}
    decoded = {d["key"]: d["image"] for d in decode_encoded(model, str(out), batch_size=4)}
    assert sorted(latents) == sorted(decoded) == ["tall", "tall2", "wide", "wide2"]
    with torch.no_grad():
        for key, stored in latents.items():
            x = native_crop(data[key], 4)
            assert x.shape[1:] == ((16, 20) if key.startswith("wide") else (24, 16))
            posterior = model.posterior(x[None])
            assert stored.shape == (8, x.shape[1] // 4, x.shape[2] // 4)
            # batch 2 here, 1 there: oneDNN's kernels (and float sums) depend on the batch size
            assert_close_across_kernels(stored, torch.cat([posterior.mean, posterior.logvar], 1)[0],
                                        layers=weight_layers(model.encoder, model.quant_conv))
            assert_close_across_kernels(decoded[key], model.decode(posterior.mean)[0], layers=weight_layers(model))
    # resuming compares the new fields: the same settings find everything done (sample_size is no setting),
    # a fixed resolution is another content
    model.register_to_config(sample_size=512)
    assert len(encode_dataset(model, tar, out, workers=0).shards_done_before) == 1
    with pytest.raises(LatentaeError, match=r"different settings \(crop, resolution\)"):
        encode_dataset(model, tar, out, resolution=16, workers=0)
