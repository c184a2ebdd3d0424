"""The study as study.yaml states it, typed: budgets, configurations, groups, claims and the diffusability probe's
settings; and the RunConfig each configuration trains with."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STUDY = Path(__file__).with_name("study.yaml")


@dataclass(frozen=True)
class Budget:
    name: str
    resolution: int
    batch_size: int
    lr: float
    steps: int  # optimizer steps of the step-bound configurations
    seconds: float  # training seconds (evaluation excluded) of the comparison group
    evals: int  # held-out evaluations per run, evenly spaced in steps (or in seconds)
    models: dict  # family -> its architecture (model config keys)
    codebook_size: int
    fsq_levels: tuple[int, ...]
    train: str  # training data, relative to --data-root
    heldout_cap: int | None = None  # the first N images of each held-out set (None: all)
    shuffle_buffer: int = 1000
    grid_images: int = 8
    one_process: bool = False  # every configuration in one worker process
    scale: float = 1.0  # --scale: steps and seconds multiplied by it
    probe: str | None = None  # latentae.probe budget of the diffusability probe (None: no probe)
    probe_data: str = "tiny-imagenet-64/tiny-{00000..00009}.tar"  # the probe's images, relative to --data-root


@dataclass(frozen=True)
class Configuration:
    name: str
    group: str
    family: str  # kl | vq
    what: str  # a template, filled in by `describe`
    overrides: tuple[str, ...] = ()  # dot-list templates, filled in by `config_overrides`
    trainer: str = "latentae"  # or "plain": the diffusers example's loop
    bound: str = "steps"  # or "seconds"


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    configurations: tuple[str, ...]
    measure: str  # a function of claims.py
    claim: str
    thresholds: dict = field(default_factory=dict)
    quoted: str | None = None  # a configuration reported beside the claim's, not judged


@dataclass(frozen=True)
class Diffusability:
    baseline: str
    group: str
    normalize: str  # the probe's latent normalization
    thresholds: dict
    claims: dict  # configuration -> its paper's claim
    controls: tuple = ()  # configurations probed beside the group, not judged


def _load(path: Path = STUDY) -> dict:
    data = yaml.safe_load(path.read_text())
    budgets = {name: Budget(name=name, **{**b, "fsq_levels": tuple(b["fsq_levels"])})
               for name, b in data["budgets"].items()}
    confs = tuple(Configuration(**{**c, "overrides": tuple(c.get("overrides", ()))}) for c in data["configurations"])
    claims = tuple(Claim(**{**c, "configurations": tuple(c["configurations"])}) for c in data["claims"])
    unknown = {c.group for c in confs} - set(data["groups"]) | {c.family for c in confs} - set(data["families"])
    named = ({n for c in claims for n in (*c.configurations, c.quoted) if n} | {data["diffusability"]["baseline"]}
             | set(data["diffusability"].get("controls", ())))
    unknown |= named - {c.name for c in confs}
    if unknown:
        raise SystemExit(f"{path}: unknown group(s) or configuration(s): {', '.join(sorted(unknown))}")
    return dict(settings=data["settings"], heldout=tuple(data["heldout"].items()), budgets=budgets,
                families=data["families"],
                groups=data["groups"], configurations=confs, claims=claims,
                diffusability=Diffusability(**{**data["diffusability"],
                                               "controls": tuple(data["diffusability"].get("controls", ()))}))


_STUDY = _load()
SETTINGS: dict = _STUDY["settings"]
HELDOUT: tuple[tuple[str, str], ...] = _STUDY["heldout"]  # (label, folder under --data-root)
BUDGETS: dict[str, Budget] = _STUDY["budgets"]
FAMILIES: dict[str, dict] = _STUDY["families"]  # family -> its shared config beyond the budget's
GROUPS: dict[str, dict] = _STUDY["groups"]
CONFIGURATIONS: tuple[Configuration, ...] = _STUDY["configurations"]
CLAIMS: tuple[Claim, ...] = _STUDY["claims"]
DIFFUSABILITY: Diffusability = _STUDY["diffusability"]
BY_NAME = {c.name: c for c in CONFIGURATIONS}
PROBED = (DIFFUSABILITY.baseline, *(c.name for c in CONFIGURATIONS if c.group == DIFFUSABILITY.group),
          *DIFFUSABILITY.controls)  # baseline first


def scaled(budget: Budget, scale: float) -> Budget:
    if scale <= 0:
        raise SystemExit(f"--scale must be > 0, got {scale}")
    return dataclasses.replace(budget, steps=max(1, round(budget.steps * scale)), seconds=budget.seconds * scale,
                               scale=scale)


def budget_values(budget: Budget) -> dict:
    """What the templates of study.yaml are filled in with."""
    return {**SETTINGS, "steps": budget.steps, "cycle": max(1, budget.steps // SETTINGS["cycles"]),
            "gan_start": budget.steps * 2 // 5, "gan_warmup": budget.steps // 5, "codebook_size": budget.codebook_size,
            "fsq_levels": list(budget.fsq_levels), "fsq_dim": len(budget.fsq_levels),
            "fsq_size": math.prod(budget.fsq_levels)}


def describe(conf: Configuration, budget: Budget) -> str:
    return conf.what.format(**budget_values(budget))


def config_overrides(conf: Configuration, budget: Budget) -> list[str]:
    values = budget_values(budget)
    return [o.format(**values) for o in conf.overrides]


def base_config(budget: Budget, family: str, data_root: Path) -> dict:
    """What every configuration of a family shares: architecture, data, batch, learning rate, no LPIPS, then the
    family's own keys (study.yaml's `families`)."""
    train_spec = ",".join(str(data_root / part) for part in budget.train.split(","))
    base = {"seed": 0, "model": {"family": family, **budget.models[family]},
            "loss": {"perceptual_weight": 0.0},  # LPIPS trunk weights are not available offline
            "data": {"train": train_spec, "resolution": budget.resolution, "num_workers": 1,
                     "shuffle_buffer": budget.shuffle_buffer},
            "train": {"batch_size": budget.batch_size, "lr": budget.lr, "max_steps": budget.steps}}
    for section, keys in FAMILIES[family].items():
        base[section] = {**base[section], **keys}
    return base


def run_config(conf: Configuration, budget: Budget, data_root: Path, run_dir: Path):
    """The RunConfig of `conf`: the family's base written as run_dir/study.yaml, then the dot-list overrides."""
    from latentae.trainer.config import load_run_config

    run_dir.mkdir(parents=True, exist_ok=True)
    base = run_dir / "study.yaml"
    base.write_text(yaml.safe_dump(base_config(budget, conf.family, data_root), sort_keys=False))
    return load_run_config(str(base), [f"output_dir={run_dir / 'trainer'}", *config_overrides(conf, budget)])
