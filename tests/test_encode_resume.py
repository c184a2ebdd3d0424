"""Killing `latentae encode` halfway and rerunning it writes only the missing shards, every sample once;
under torchrun the ranks split the shards."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_encode import make_shards, output_keys, tiny_kl

from latentae.cli import main
from latentae.exporting import export


def test_kill_then_rerun_writes_the_remaining_shards_only(tmp_path, capsys):
    model_dir = export(tiny_kl(), tmp_path / "model")
    pattern, keys = make_shards(tmp_path / "in", 8, 8)
    out = tmp_path / "out"
    argv = ["encode", "--model", str(model_dir), "--data", pattern, "--output", str(out), "--resolution", "32",
            "--batch-size", "4", "--workers", "0", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "latentae.cli", *argv], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.tar")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no cleanup: as if the machine went away
    finally:
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert 0 < len(finished) < 8, (finished, proc.stderr.read().decode()[-2000:])
    assert not (out / "manifest.json").exists()

    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"into {8 - len(finished)} shards" in printed and f"{len(finished)} shards were already done" in printed
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime  # not rewritten
    assert len(list(out.glob("*.tar"))) == 8 and not list(out.glob("*.tmp"))
    written = output_keys(out)
    assert sorted(written) == sorted(keys) and len(written) == len(set(written)) == 64


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_shards(tmp_path):
    model_dir = export(tiny_kl(), tmp_path / "model")
    pattern, keys = make_shards(tmp_path / "in", 3, 2)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                             "latentae.cli", "encode", "--model", str(model_dir), "--data", pattern, "--output",
                             str(out), "--workers", "0", "-q"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0: encoded 4 images into 2 shards" in result.stdout
    assert "rank 1: encoded 2 images into 1 shards" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == 6 and sorted(output_keys(out)) == sorted(keys)
