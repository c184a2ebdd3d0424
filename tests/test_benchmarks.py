"""The benchmark scripts stay runnable (tiny settings; the figures themselves live in BENCHMARKS.md)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_runs_both_sides():
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "train", "--preset",
           str(ROOT / "configs" / "tiny-kl.yaml"), "--resolution", "32", "--steps", "2", "--warmup", "1",
           "--repeats", "1", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "ratio ours/plain" in out.stdout and "verdict" in out.stdout
