"""`benchmark.py quality`: its options, and the study run as worker processes, then the report."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import load_average

from ..paths import DATA_ROOT, ENTRY, ROOT
from .study import BUDGETS, BY_NAME, CONFIGURATIONS, HELDOUT, Budget, Configuration, describe, scaled


def add_arguments(p):
    p.epilog = "configurations (sizes of --budget cpu):\n" + "\n".join(
        f"  {c.name:24s} {c.group:10s} {describe(c, BUDGETS['cpu'])}" for c in CONFIGURATIONS)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="smoke: minutes, for the test suite; "
                   "cpu: the study on 2 cores (~45 min idle); gpu: the same study at 256 px (default cpu)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the budget's steps and seconds (e.g. 0.2 to "
                   "fit a short GPU lease); results of another scale in --output are left out of the report")
    p.add_argument("--only", default=None, metavar="NAME,NAME", help="run these configurations only; the report "
                   "still shows every result of the same budget already in --output")
    p.add_argument("--output", default=None, help="output folder (default: quality-BUDGET)")
    p.add_argument("--data-root", default=str(DATA_ROOT), help="folder holding tiny-imagenet-64/, "
                   "bsds500/ and kodak/ (default: ../shared/data beside the checkout)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per run (default: "
                   "all CPUs; on a machine other jobs share, 1: two threads per op then wait on each other)")
    p.add_argument("--report-only", action="store_true", help="train no autoencoder: rebuild the report from the "
                   "results already in --output (the diffusability probe still runs where its result is missing or "
                   "older than its models)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: train and measure one configuration


def selected(only: str | None) -> list[Configuration]:
    if not only:
        return list(CONFIGURATIONS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def check_data(data_root: Path, budget: Budget) -> None:
    needed = [str(Path(part.split("{")[0]).parent) if "{" in part else part for part in budget.train.split(",")]
    needed += [folder for _, folder in HELDOUT]
    missing = [p for p in needed if not (data_root / p).exists()]
    if missing:
        raise SystemExit(f"data not found under {data_root}: {', '.join(missing)} (see shared/data/README.md; "
                         "--data-root names the folder)")


def spawn(confs: list[Configuration], args, out: Path) -> bool:
    cmd = [sys.executable, str(ENTRY), "quality", "--worker", ",".join(c.name for c in confs),
           "--budget", args.budget, "--scale", repr(args.scale), "--output", str(out), "--data-root", args.data_root,
           "--threads", str(args.threads)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode == 0


def collect(out: Path, budget: Budget) -> dict[str, dict]:
    """Every result in `out` made with `budget` (and its scale), in the order of CONFIGURATIONS."""
    results = {}
    for conf in CONFIGURATIONS:
        path = out / "runs" / conf.name / "result.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if (result.get("budget"), result.get("scale")) == (budget.name, budget.scale):
                results[conf.name] = result
    return results


def run(args):
    if args.worker:
        from .worker import worker

        return worker(args)
    budget = scaled(BUDGETS[args.budget], args.scale)
    confs = selected(args.only)
    data_root = Path(args.data_root).resolve()
    check_data(data_root, budget)
    out = Path(args.output or f"quality-{budget.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from latentae.precision import machine_description

    torch.set_num_threads(args.threads)  # as the runs use (the machine line names it)
    print(f"{machine_description()}; load average {load_average()}")
    print(f"budget {budget.name} x{budget.scale:g}: {budget.resolution} px, batch {budget.batch_size}, "
          f"lr {budget.lr:g}, {budget.steps} steps or {budget.seconds:g} s (comparison group); {len(confs)} "
          f"configuration(s) -> {out}",
          flush=True)
    failed = []
    started = time.perf_counter()
    for batch in [] if args.report_only else [confs] if budget.one_process else [[c] for c in confs]:
        t = time.perf_counter()
        results = [out / "runs" / c.name / "result.json" for c in batch]
        for path in results:  # a result left from an earlier study must not stand in for a failed run
            path.unlink(missing_ok=True)
        ok = spawn(batch, args, out)
        lost = [c.name for c, path in zip(batch, results) if not path.is_file()]
        failed += lost or ([] if ok else [c.name for c in batch])
        print(f"[{','.join(c.name for c in batch)}] {'FAILED: ' + ', '.join(lost) if lost or not ok else 'done'} in "
              f"{(time.perf_counter() - t) / 60:.1f} min; load average {load_average()}", flush=True)
    if not args.report_only:
        print(f"ran {len(confs)} configuration(s) in {(time.perf_counter() - started) / 60:.1f} min")
    results = collect(out, budget)
    if not results:
        print(f"no results of budget {budget.name} x{budget.scale:g} in {out}: no report")
    else:
        from .diffusability import diffusability_probe
        from .heldout import heldout_sets
        from .report import write_report

        probe_report = diffusability_probe(out, budget, data_root, results)
        heldout = [(label, len(sources)) for label, sources in heldout_sets(budget, data_root)]
        for path in write_report(results, budget, out, heldout, probe=probe_report):
            print(f"wrote {path}")
    if failed:
        print(f"failed: {', '.join(failed)} (see their output above)")
        return 1
    return 0
