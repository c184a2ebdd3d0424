"""The diffusability probe on the study's saved models: one `latentae.probe` call, reused while the results it
probed are unchanged."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from machine import load_average

from .study import DIFFUSABILITY, PROBED, Budget


def result_digests(out: Path, names: list[str]) -> dict[str, str]:
    """A digest of each run's result.json: a re-run changes it, so a probe of the older models is not reused."""
    return {n: hashlib.sha256((out / "runs" / n / "result.json").read_bytes()).hexdigest()[:16] for n in names}


def diffusability_probe(out: Path, budget: Budget, data_root: Path, results: dict) -> dict | None:
    """The probe's report on the saved models of PROBED in `out` (OUTPUT/probe/report.json, with the digests of
    the results it probed under "study"), run in one `probe` call, or reused when those digests still match.
    None when the budget has no probe or the baseline and one regularized row are not both there."""
    import torch

    from latentae.probe import BUDGETS as PROBE_BUDGETS
    from latentae.probe import probe
    from latentae.probe.run import markdown

    normalize = DIFFUSABILITY.normalize
    names = [n for n in PROBED if n in results and (out / "runs" / n / "model").is_dir()]
    if budget.probe is None or PROBED[0] not in names or len(names) < 2:
        print(f"diffusability probe: not run (budget {budget.name}: probe {budget.probe}; models: "
              f"{', '.join(names) or 'none'}; it needs {PROBED[0]} and at least one of {', '.join(PROBED[1:])})")
        return None
    settings = dataclasses.replace(PROBE_BUDGETS[budget.probe], resolution=budget.resolution)
    path = out / "probe" / "report.json"
    study = {"budget": budget.name, "scale": budget.scale, "data": budget.probe_data, "probe": budget.probe,
             "settings": settings.as_dict(), "normalize": normalize, "results": result_digests(out, names)}
    if path.is_file():
        report = json.loads(path.read_text())
        if report.get("study") == study:
            print(f"diffusability probe: reusing {path} ({', '.join(names)})")
            return report
    from latentae.runtime import default_device
    from latentae.loading import load

    device = default_device()
    models = {n: load(out / "runs" / n / "model", device=device) for n in names}
    print(f"diffusability probe ({budget.probe} preset, {settings.steps} DiT steps per model, "
          f"{normalize} normalization) on {', '.join(names)}; load average {load_average()}", flush=True)
    t = time.perf_counter()
    report = probe(models, str(data_root / budget.probe_data), budget=settings, budget_name=budget.probe, seed=0,
                   normalize=normalize, output=out / "probe", device=device)
    report.update(data=f"DATA_ROOT/{budget.probe_data}", study=study,  # no machine paths in the committed copy
                  run={"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()})
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out / "probe" / "report.md").write_text(markdown(report))
    print(f"diffusability probe: {report['run']['seconds'] / 60:.1f} min; ranking by {report['rank_by']}: "
          f"{', '.join(report['ranking'])}", flush=True)
    return report
