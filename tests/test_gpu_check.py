"""scripts/gpu_check.sh stays runnable: its --dry-run runs every section at tiny sizes on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path):
    """Without photos (an empty --data-root): encode reads procedural images, quality is skipped, said so."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # this python
    env.pop("OUT", None)
    (tmp_path / "no-photos").mkdir()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out"),
                           "--data-root", str(tmp_path / "no-photos")],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "- GPU: none" in figures and "- torch " in figures
    assert "the encode benchmark reads procedural images" in figures
    for title, result in (("## train step", "ratio ours/plain"), ("## encode", "speed-up of the defaults")):
        section = figures.split(title, 1)[1].split("\n## ", 1)[0]
        assert result in section and "time cap" not in section and "failed" not in section, section
    assert "## quality\n\nskipped: no photos" in figures
    assert (tmp_path / "out" / "gpu-check.log").stat().st_size > 0
