"""Readers: exactly-once evaluation across ranks and workers, bad samples counted, resumable training."""
import io
import itertools
import json
import random
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from latentae.data import (DataConfig, SkipCounter, eval_loader, expand_sources, expand_urls, read_shard,
                           train_loader)
from latentae.data.sources import expand_source_groups, tar_index
from latentae.data.transforms import to_tensor
from latentae.errors import LatentaeError


def png(w=12, h=10, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(w, h, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def bomb_png() -> bytes:
    """A 1x1 PNG whose header claims 40000 x 40000 pixels."""
    data = bytearray(png(1, 1))
    data[16:24] = struct.pack(">II", 40_000, 40_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def write_tar(path, samples):
    with TarWriter(str(path), encoder=False) as w:
        for sample in samples:
            w.write(sample)
    return str(path)


def make_shards(folder, n_shards, per_shard, **image_kw) -> tuple[str, list[str]]:
    """n_shards tars of per_shard PNG samples; returns (brace pattern, keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(n_shards):
        samples = [{"__key__": f"s{i}-{j:02d}", "png": png(seed=100 * i + j, **image_kw)} for j in range(per_shard)]
        write_tar(folder / f"part-{i:05d}.tar", samples)
        keys += [s["__key__"] for s in samples]
    return str(folder / f"part-{{00000..{n_shards - 1:05d}}}.tar"), keys


def eval_keys(source, *, rank, world_size, num_workers=2, batch_size=3):
    cfg = DataConfig(resolution=8, num_workers=num_workers)
    return [k for b in eval_loader(cfg, batch_size=batch_size, rank=rank, world_size=world_size, source=source)
            for k in b["key"]]


@pytest.mark.parametrize("kind", ["shards", "folder"])
def test_eval_two_ranks_two_workers_read_every_sample_exactly_once(tmp_path, kind):
    if kind == "shards":
        source, keys = make_shards(tmp_path, n_shards=5, per_shard=7)
    else:
        for i in range(11):
            (tmp_path / f"img{i:02d}.png").write_bytes(png(seed=i))
        source, keys = str(tmp_path), [f"img{i:02d}" for i in range(11)]
    per_rank = [eval_keys(source, rank=r, world_size=2) for r in range(2)]
    seen = per_rank[0] + per_rank[1]
    assert sorted(seen) == sorted(keys) and len(seen) == len(set(seen))
    assert all(per_rank)  # both ranks got work
    assert eval_keys(source, rank=1, world_size=2) == per_rank[1]  # same order every time


def test_eval_with_fewer_shards_than_ranks_times_workers(tmp_path):
    source, keys = make_shards(tmp_path, n_shards=1, per_shard=5)
    per_rank = [eval_keys(source, rank=r, world_size=2) for r in range(2)]
    assert per_rank == [keys, []]  # rank 1 has nothing and yields nothing: no hang, no error
    partial = [b["image"].shape[0] for b in eval_loader(DataConfig(resolution=8), batch_size=3, source=source)]
    assert partial == [3, 2]  # the last, partial batch is kept


@pytest.fixture
def bad_shards(tmp_path):
    """One shard with a bad member of every kind between good ones, and a tar cut short."""
    good = [{"__key__": f"good{i}", "png": png(16, 16, seed=i)} for i in range(4)]
    bad = write_tar(tmp_path / "bad-00000.tar", [
        good[0],
        {"__key__": "truncated", "jpg": jpeg(32, 32)[:250]},
        {"__key__": "garbage", "webp": b"\x00\x01 not an image at all"},
        {"__key__": "empty", "jpg": b""},
        {"__key__": "caption-only", "txt": b"a caption", "json": b"{}"},
        good[1],
        {"__key__": "oversized", "png": png(64, 64)},  # 4096 pixels > max_pixels below
        {"__key__": "bomb", "png": bomb_png()},
        {"__key__": "tiny", "png": png(8, 8)},  # below the 16 px crop, small_images="skip"
        good[2],
    ])
    cut = tmp_path / "bad-00001.tar"
    whole = (tmp_path / "whole.tar")
    write_tar(whole, [good[3], {"__key__": "lost", "png": png(16, 16, seed=9)}])
    with tarfile.open(whole) as tf:
        last = tf.getmembers()[-1]
    cut.write_bytes(whole.read_bytes()[: last.offset_data + last.size // 2])  # into the last member's data
    whole.unlink()
    return bad, str(cut)


EXPECTED_BAD = {"decode_error": 2, "empty": 1, "no_image": 1, "too_many_pixels": 2, "too_small": 1}


def test_bad_samples_are_skipped_and_counted_by_reason(bad_shards):
    bad, cut = bad_shards
    cfg = DataConfig(resolution=16, max_pixels=1000, small_images="skip", num_workers=2)
    loader = eval_loader(cfg, batch_size=2, source=f"{bad},{cut}")
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == ["good0", "good1", "good2", "good3"]
    assert loader.skipped.as_dict() == {**EXPECTED_BAD, "read_error": 1}

    # the same through webdataset's streaming reader (pipe:)
    skipped = SkipCounter()
    streamed = [s["key"] for s in read_shard(f"pipe:cat {bad}", resolution=16, max_pixels=1000,
                                             small_images="skip", skipped=skipped)]
    assert streamed == ["good0", "good1", "good2"] and skipped.as_dict() == EXPECTED_BAD
    skipped = SkipCounter()
    assert [s["key"] for s in read_shard(f"pipe:cat {cut}", resolution=16, skipped=skipped)] == ["good3"]
    assert skipped.as_dict() == {"read_error": 1}

    # upscale mode keeps the small one; training streams keep going and report the counts
    upscale = DataConfig(resolution=16, max_pixels=1000, num_workers=0)
    assert "tiny" in [k for b in eval_loader(upscale, batch_size=4, source=bad) for k in b["key"]]
    train = train_loader(DataConfig(train=f"{bad},{cut}", resolution=16, max_pixels=1000, small_images="skip",
                                    num_workers=2, shuffle_buffer=4), batch_size=4, seed=0)
    it = iter(train)
    batches = [next(it) for _ in range(6)]
    assert all(set(b["key"]) <= {"good0", "good1", "good2", "good3"} for b in batches)
    assert set(train.skipped.as_dict()) <= set(EXPECTED_BAD) | {"read_error"} and train.skipped.total > 0
    assert sum(sum(b["skipped"].values()) for b in batches) == train.skipped.total


def test_everything_bad_fails_clearly_instead_of_spinning(tmp_path):
    bad = write_tar(tmp_path / "bad.tar", [{"__key__": f"x{i}", "txt": b"."} for i in range(50)])
    it = iter(train_loader(DataConfig(train=bad, resolution=8, num_workers=0), batch_size=2, seed=0))
    with pytest.raises(LatentaeError, match="in a row were skipped"):
        next(it)


def test_restarting_at_step_k_gives_the_same_batches(tmp_path):
    for i in range(3):  # every fourth sample is garbage, so replays cross skipped samples
        write_tar(tmp_path / f"part-{i}.tar", [{"__key__": f"s{i}-{j:02d}", "png": png(14, 11, seed=10 * i + j)
                                                if j % 4 else b"junk"} for j in range(12)])
    cfg = DataConfig(train=str(tmp_path / "part-{0..2}.tar"), resolution=8, num_workers=2, chunk_size=8,
                     shuffle_buffer=6)  # 2-batch chunks

    def batches(start, n):
        it = iter(train_loader(cfg, batch_size=4, seed=7, start_step=start))
        return [next(it) for _ in range(n)]

    full = batches(0, 11)
    seen = {k for b in full for k in b["key"]}
    assert {k[:2] for k in seen} == {"s0", "s1", "s2"} and len(seen) > 15  # mixed, not one shard's prefix
    for k in (3, 6):  # 3: one worker resumes mid-chunk, the other at a chunk start; 6: both mid-chunk
        resumed = batches(k, 11 - k)
        for a, b in zip(full[k:], resumed):
            assert a["key"] == b["key"]
            assert torch.equal(a["image"], b["image"])
            assert a["skipped"] == b["skipped"]  # replayed skips are not counted twice
    assert sum(sum(b["skipped"].values()) for b in full) > 0
    other_seed = next(iter(train_loader(cfg, batch_size=4, seed=8)))
    assert other_seed["key"] != full[0]["key"]


def test_training_batches_from_a_folder_and_rank_slices(tmp_path):
    for i in range(6):
        (tmp_path / "imgs" / "sub").mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / ("sub" if i % 2 else "") / f"p{i}.png").write_bytes(png(20, 15, seed=i))
    cfg = DataConfig(train=str(tmp_path / "imgs"), resolution=8, num_workers=0, hflip=True)
    batch = next(iter(train_loader(cfg, batch_size=5, seed=0)))
    assert batch["image"].shape == (5, 3, 8, 8) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert set(batch["key"]) <= {"p0", "sub/p1", "p2", "sub/p3", "p4", "sub/p5"}

    pattern, _ = make_shards(tmp_path / "shards", n_shards=4, per_shard=3)
    cfg = DataConfig(train=pattern, resolution=8, num_workers=0, shuffle_buffer=1)
    for rank in range(2):  # with at least world_size shards, ranks read disjoint slices
        it = iter(train_loader(cfg, batch_size=6, seed=0, rank=rank, world_size=2))
        shards = {k.split("-")[0] for _ in range(4) for k in next(it)["key"]}
        assert shards <= {f"s{rank}", f"s{rank + 2}"}


def test_tiny_imagenet_shards_read_without_conversion(shared_data):
    tars = sorted((shared_data / "tiny-imagenet-64").glob("tiny-*.tar"))
    samples = list(read_shard(str(tars[0]), resolution=64))
    assert len(samples) == 1000
    first = samples[0]
    assert json.loads(first["extras"]["json"])["key"] == first["key"]
    with tarfile.open(tars[0]) as tf:
        original = Image.open(tf.extractfile(f"{first['key']}.jpg")).convert("RGB")
    assert original.size == (64, 64) and torch.equal(first["image"], to_tensor(original))

    cfg = DataConfig(train=str(shared_data / "tiny-imagenet-64" / "tiny-{00000..00009}.tar"), resolution=64,
                     num_workers=2)
    loader = eval_loader(cfg, batch_size=256, source=f"{tars[0]},{tars[1]}")
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == len(set(keys)) == 2000 and loader.skipped.total == 0
    batch = next(iter(train_loader(cfg, batch_size=16, seed=0)))
    assert batch["image"].shape == (16, 3, 64, 64)


def test_expand_urls_forms(tmp_path):
    pattern, _ = make_shards(tmp_path / "s", n_shards=3, per_shard=1)
    (tmp_path / "f" / "deep").mkdir(parents=True)
    (tmp_path / "f" / "deep" / "b.png").write_bytes(png())
    (tmp_path / "f" / "a.jpg").write_bytes(jpeg(8, 8))
    (tmp_path / "f" / "readme.md").write_text("x")
    s = tmp_path / "s"
    assert expand_urls(pattern) == [str(s / f"part-0000{i}.tar") for i in range(3)]
    assert expand_urls(f"{s}/part-0000{{0,2}}.tar, {tmp_path / 'f'}") == [
        str(s / "part-00000.tar"), str(s / "part-00002.tar"), str(tmp_path / "f" / "a.jpg"),
        str(tmp_path / "f" / "deep" / "b.png")]
    assert expand_urls(str(s / "*.tar")) == expand_urls(pattern)
    assert [src.key for src in expand_sources(str(tmp_path / "f"))] == ["a", "deep/b"]
    write_tar(tmp_path / "f" / "t.tar", [{"__key__": "x", "png": png()}])  # a folder's tars and images: 2 groups
    groups = expand_source_groups(f"{pattern},{tmp_path / 'f'}")
    assert [[Path(src.url).name for src in g] for g in groups] == [
        [f"part-0000{i}.tar" for i in range(3)], ["t.tar"], ["a.jpg", "b.png"]]
    assert expand_urls("pipe:curl -s http://x/{0..1}.tar") == ["pipe:curl -s http://x/0.tar",
                                                               "pipe:curl -s http://x/1.tar"]
    for bad in (str(tmp_path / "missing.tar"), str(tmp_path / "f" / "readme.md"), str(s / "*.zip")):
        with pytest.raises(LatentaeError):
            expand_urls(bad)

    local = [(x["key"], x["image"]) for x in read_shard(str(s / "part-00001.tar"), resolution=8)]
    piped = [(x["key"], x["image"]) for x in read_shard(f"pipe:cat {s / 'part-00001.tar'}", resolution=8)]
    assert [k for k, _ in local] == [k for k, _ in piped] == ["s1-00"]
    assert torch.equal(local[0][1], piped[0][1])


def test_fast_jpeg_changes_training_decodes_only(tmp_path):
    (tmp_path / "big.jpg").write_bytes(jpeg(600, 400))

    def images(fast_jpeg):
        cfg = DataConfig(train=str(tmp_path), resolution=64, num_workers=0, fast_jpeg=fast_jpeg)
        train = next(iter(train_loader(cfg, batch_size=1, seed=0)))["image"]
        evaluated = next(iter(eval_loader(cfg, batch_size=1, source=cfg.train)))["image"]
        return train, evaluated

    (fast_train, fast_eval), (full_train, full_eval) = images(True), images(False)
    assert not torch.equal(fast_train, full_train)  # decoded at a reduced DCT scale
    assert torch.equal(fast_eval, full_eval)  # evaluation always decodes fully


def _draw_rates(spec: str, world_size: int, per_rank: int) -> tuple[dict[str, float], list[set[str]]]:
    """Raw samples drawn by each of `world_size` simulated ranks (`per_rank` each: ranks yield equally many per
    step), through the real rank split and source choice: (draws per sample of each shard, shards per rank),
    shards named "folder/file"."""
    from latentae.data.train_stream import _RedirectableSkips

    def name(url: str) -> str:
        return f"{Path(url).parent.name}/{Path(url).name}"

    cfg = DataConfig(train=spec, resolution=8, num_workers=0)
    counts: dict[str, int] = {}
    read_by = []
    for rank in range(world_size):
        stream = train_loader(cfg, batch_size=1, seed=0, rank=rank, world_size=world_size).dataset
        raw = stream._raw(random.Random(f"rates/{rank}"), _RedirectableSkips(SkipCounter()))
        urls = [name(s["__url__"]) for s in itertools.islice(raw, per_rank)]
        read_by.append(set(urls))
        for u in urls:
            counts[u] = counts.get(u, 0) + 1
    sizes = {name(s.url): len(tar_index(s.url)[0]) for s in expand_sources(spec)}
    return {u: counts.get(u, 0) / size for u, size in sizes.items()}, read_by


def test_rank_split_keeps_every_sample_at_the_same_rate(tmp_path):
    # Every tolerance below: the counts are sums of binomial shard picks (seeded Python RNG: the same on every
    # machine); 10% of the expected count is over 4 of their standard deviations, the re-weighting guarded
    # against is 50%.
    # 9 shards of 2 samples on 8 ranks (a plain split drew rank 0's two at half the others' rate): each rank
    # owns one, the ninth is shared. ~2250 picks per rank: own shard p = 8/9, shared p = 1/9, so 2000 draws per
    # sample, sd sqrt(8 * 2250 * 1/9 * 8/9) = 42 for the shared shard, sqrt(2250 * 8/9 * 1/9) = 15 for the others.
    pattern, _ = make_shards(tmp_path / "nine", n_shards=9, per_shard=2, w=4, h=4)
    rates, read_by = _draw_rates(pattern, world_size=8, per_rank=4500)
    assert all(abs(r - 2000) < 200 for r in rates.values()), rates
    assert read_by == [{f"nine/part-{r:05d}.tar", "nine/part-00008.tar"} for r in range(8)]

    # 8 shards on 8 ranks: each rank reads its own shard only.
    pattern, _ = make_shards(tmp_path / "eight", n_shards=8, per_shard=2, w=4, h=4)
    _, read_by = _draw_rates(pattern, world_size=8, per_rank=50)
    assert read_by == [{f"eight/part-{r:05d}.tar"} for r in range(8)]

    # A-{0..7}.tar (2 samples each), B-{0..1}.tar (3 each) on 8 ranks: each rank owns one A shard (p = 0.8),
    # both B shards are shared (p = 0.1 each); 2.2 samples per pick, 2000 picks per rank, so 1600 draws per
    # sample, sd sqrt(2000 * 0.8 * 0.2) = 18 for A, sqrt(8 * 2000 * 0.1 * 0.9) = 38 for B.
    a, _ = make_shards(tmp_path / "A", n_shards=8, per_shard=2, w=4, h=4)
    b, _ = make_shards(tmp_path / "B", n_shards=2, per_shard=3, w=4, h=4)
    rates, read_by = _draw_rates(f"{a},{b}", world_size=8, per_rank=4400)
    assert all(abs(r - 1600) < 160 for r in rates.values()), rates
    assert read_by == [{f"A/part-{r:05d}.tar", "B/part-00000.tar", "B/part-00001.tar"} for r in range(8)]
