"""Where the benchmarks find the checkout, their entry point and the shared photos and models."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
ENTRY = ROOT / "scripts" / "benchmark.py"  # what a benchmark's worker processes run
SHARED = ROOT / ".." / "shared"  # photos (data/) and models (models/) beside the checkout
DATA_ROOT = SHARED / "data"
