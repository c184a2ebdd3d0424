"""eval.max_images / --max-images means the first N images of one global order (the sources in order, each in
stored order), whatever the number of processes: 1, 2 and 4 ranks evaluate the same images, in the same order,
also when N is below one shard's size and when the shards are uneven."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from webdataset import TarWriter

from conftest import free_port
from dist_eval_worker import CASES, run
from latentae.data import DataConfig, SkipCounter, eval_loader

HERE = Path(__file__).resolve().parent

# CASES name -> (keys evaluated, skip counts); c1 is not an image
EXPECTED = {
    "below one shard": ([f"o{i}" for i in range(7)], {}),
    "uneven shards": (["a0", "a1", "a2", "a3", "a4", "b0", "b1", "c0", "c2"], {"decode_error": 1}),
    "uneven shards, all": (["a0", "a1", "a2", "a3", "a4", "b0", "b1", "c0", "c2", "c3", "c4", "c5", "c6"],
                           {"decode_error": 1}),
}


def png(seed: int, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC).save(
        buf, "PNG")
    return buf.getvalue()


def write_data(folder: Path) -> Path:
    """one.tar: 10 images; part-0..2.tar: 5, 2 and 7 samples. Landscape and portrait images (native size:
    batches of one size) alternate irregularly."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {"one.tar": [f"o{i}" for i in range(10)], "part-0.tar": [f"a{i}" for i in range(5)],
              "part-1.tar": ["b0", "b1"], "part-2.tar": [f"c{i}" for i in range(7)]}
    seed = 0
    for name, keys in shards.items():
        with TarWriter(str(folder / name), encoder=False) as w:
            for key in keys:
                seed += 1
                size = (40, 26) if seed % 3 else (26, 40)  # odd sides: cropped to 40 x 26 / 26 x 40 (f = 2)
                w.write({"__key__": key, "png": b"not an image" if key == "c1" else png(seed, size)})
    return folder


@pytest.mark.parametrize("num_workers", [0, 2])
def test_first_images_are_the_same_for_any_number_of_ranks(tmp_path, num_workers):
    data = write_data(tmp_path)
    for name, (source, max_images) in CASES.items():
        keys, skipped = EXPECTED[name]
        for world_size in (1, 2, 4):
            got, skips = [], SkipCounter()
            for rank in range(world_size):
                loader = eval_loader(DataConfig(num_workers=num_workers), batch_size=3, rank=rank,
                                     world_size=world_size, source=str(data / source), native_multiple=2)
                for batch in loader if max_images is None else loader.first(max_images):
                    assert len({tuple(image.shape) for image in batch["image"]}) == 1
                    got += [(tuple(p), key) for p, key in zip(batch["position"], batch["key"])]
                skips.update(loader.skipped.as_dict())
            assert [key for _, key in sorted(got)] == keys, (name, world_size)
            assert skips.as_dict() == skipped, (name, world_size)


@pytest.mark.slow
def test_one_two_and_four_processes_evaluate_the_same_images(tmp_path):
    data = write_data(tmp_path / "data")
    results = {1: run(data)}
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    for n in (2, 4):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
               str(free_port()), str(HERE / "dist_eval_worker.py"), str(data), str(tmp_path / f"{n}.json")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[n] = json.loads((tmp_path / f"{n}.json").read_text())
    for name, (keys, skipped) in EXPECTED.items():
        for n, got in results.items():
            case = got[name]
            assert case["processes"] == n and case["n_images"] == len(keys), (name, n)
            assert case["keys"] == keys and case["skipped"] == skipped, (name, n)
            # other batch compositions (and thread counts) per process count: oneDNN may pick other kernels and
            # flip a few uint8 roundings of the 3,120 values per image (~1e-4 dB each)
            assert case["psnr"] == pytest.approx(results[1][name]["psnr"], abs=1e-3), (name, n)
