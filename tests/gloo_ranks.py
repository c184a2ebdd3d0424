"""Runs a worker script as N gloo ranks (subprocesses; the worker calls dist.init_process_group with the file)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_gloo_ranks(worker: str, tmp_path: Path, world_size: int = 2, timeout: float = 90) -> list[str]:
    """Start `python tests/<worker> RANK WORLD_SIZE INIT_FILE` per rank; fail the test on a hang, a non-zero exit
    or a missing "rank R ok" line. Returns each rank's output."""
    init_file = tmp_path / "rendezvous"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    script = Path(__file__).with_name(worker)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(rank), str(world_size), str(init_file)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world_size)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"{worker} ranks hung")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"
        assert f"rank {rank} ok" in log
    return logs
