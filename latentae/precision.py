"""`precision: auto`, the default of `train.mixed_precision` and of the inference commands' `--precision`:
bf16 autocast where it is faster on the device at hand, fp32 elsewhere. One module serves every command.

- CUDA: bf16 when the device supports it (`torch.cuda.is_bf16_supported()`), else fp32 (fp16 needs loss
  scaling: ask for it explicitly).
- CPU: how much faster bf16 is depends on the CPU (AMD Zen 4: ~2.3x; Intel Xeon with AVX512-BF16 but no AMX:
  slower than fp32; AMX: far faster), so it is measured: a quick probe (< 1 s) runs one block of the
  autoencoder's typical work, GroupNorm + SiLU + 3x3 convolution at 256 channels on a 64x64 map, in fp32 and
  under bf16 autocast, in both memory formats, interleaved, best of a few repeats, on one thread and timed by
  CPU time (so a busy machine does not skew it; see `measure`). bf16 is chosen when it is at least MARGIN times
  faster in the memory format the command uses. The result is cached per machine in
  `$LATENTAE_CACHE_DIR/precision.json` (default: `$XDG_CACHE_HOME/latentae`, i.e. `~/.cache/latentae`), keyed by
  the CPU model, its bf16 / AMX flags, the torch version and the thread count; an unreadable cache is measured
  again and rewritten.
- `LATENTAE_AUTO_PRECISION=fp32|bf16` makes `auto` resolve to that without measuring (the test suite sets
  fp32, so its results do not depend on the machine it runs on).

The choice is printed once per process (stderr; under a distributed launch by local rank 0 only), with its
reason, e.g. `precision auto -> bf16 (bf16 2.31x fp32 (channels_last) on AMD EPYC, measured 2026-11-28, cached
in ~/.cache/latentae/precision.json)`. Explicit fp32 / bf16 / fp16 are used as given.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
ENV_CACHE_DIR = "LATENTAE_CACHE_DIR"
ENV_FORCE = "LATENTAE_AUTO_PRECISION"
MARGIN = 1.15  # bf16 must be this much faster: a ratio near 1 is noise, and bf16 costs accuracy
PROBE = "groupnorm32+silu+conv3x3 256ch 64x64 batch1 1thread cputime v2"  # changing the probe invalidates cached entries
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx_vnni")  # what decides the bf16 kernels
FORMATS = ("nchw", "channels_last")

_chosen: dict[tuple, "Choice"] = {}  # per process: (device type, channels_last) -> choice (printed once)


@dataclass(frozen=True)
class Choice:
    precision: str  # "fp32" or "bf16"
    reason: str


# ---------------------------------------------------------------------------------------------- the machine


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and which of CPU_FLAGS it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def machine_key() -> str:
    """What the cached measurement is valid for: CPU model and flags, torch version, thread count, probe."""
    import torch

    model, flags = cpu_info()
    return (f"{model} | {','.join(flags) or 'no bf16 flags'} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {PROBE}")


def machine_description() -> str:
    """One line for benchmark reports: CPU, the flags that decide bf16 speed, CPU count, torch and threads."""
    import torch

    model, flags = cpu_info()
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    return (f"CPU: {model} ({shown}), {os.cpu_count()} CPUs; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def cache_path() -> Path:
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]) / "precision.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latentae" / "precision.json"


# ---------------------------------------------------------------------------------------------- the probe


def measure(repeats: int = 5) -> dict:
    """CPU seconds of one probe block per (precision, memory format), best of `repeats`: {"fp32": {"nchw": s,
    "channels_last": s}, "bf16": {...}}. The bf16 / fp32 ratio is a property of the cores' instructions, so the
    probe runs on one thread and reads the process CPU time: then other processes holding the cores of a shared
    machine barely change it (with several threads, a thread that waits at a barrier for a preempted sibling
    burns CPU time: ratios measured that way scattered from 0.9x to 1.8x on a loaded machine, one-thread ones
    stayed within 1.75-1.95x). The four variants are interleaved, so a changing load hits all alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(repeats)
    finally:
        torch.set_num_threads(threads)


def _measure(repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.GroupNorm(32, 256), torch.nn.SiLU(), torch.nn.Conv2d(256, 256, 3, padding=1))
    x = torch.randn(1, 256, 64, 64)
    variants = {}
    for fmt in FORMATS:
        layout = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        variants[fmt] = (copy.deepcopy(block).to(memory_format=layout), x.contiguous(memory_format=layout))
    best = {p: {f: float("inf") for f in FORMATS} for p in ("fp32", "bf16")}
    with torch.inference_mode():
        for rep in range(repeats + 1):  # repetition 0 creates the oneDNN primitives
            for precision in best:
                for fmt, (module, inp) in variants.items():
                    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                                else contextlib.nullcontext())
                    t = time.process_time()
                    with autocast:
                        module(inp)
                    if rep:
                        best[precision][fmt] = min(best[precision][fmt], time.process_time() - t)
    return best


def _valid(entry) -> bool:
    try:
        return all(float(entry["seconds"][p][f]) > 0 for p in ("fp32", "bf16") for f in FORMATS)
    except (KeyError, TypeError, ValueError):
        return False


def _read(path: Path) -> dict:
    """The cache's entries, or {} when the file is missing or unreadable (it is then measured and rewritten)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path):
    """Processes of one machine (ranks of a launch) measure one at a time; the others then read the cache."""
    try:
        import fcntl

        lock = open(path.with_name(path.name + ".lock"), "w")
    except (ImportError, OSError):  # not POSIX, or a cache folder we cannot write: no lock
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cpu_measurement() -> tuple[dict, Path, bool]:
    """This machine's cached probe entry (measured now if missing or unreadable), the cache file, and whether
    it was measured by this call. A cache that cannot be written is reported once and the measurement used."""
    path, key = cache_path(), machine_key()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        entries = _read(path)
        if _valid(entries.get(key)):
            return entries[key], path, False
        model, flags = cpu_info()
        entry = {"cpu": model, "flags": flags, "probe": PROBE, "measured": datetime.date.today().isoformat(),
                 "seconds": measure()}
        entries[key] = entry
        try:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1))
            os.replace(tmp, path)
        except OSError as e:
            print(f"latentae: could not cache the precision measurement in {path} ({e})", file=sys.stderr)
    return entry, path, True


# ---------------------------------------------------------------------------------------------- the choice


def cpu_choice(channels_last: bool) -> Choice:
    entry, path, _ = cpu_measurement()
    fmt = "channels_last" if channels_last else "nchw"
    speedup = entry["seconds"]["fp32"][fmt] / entry["seconds"]["bf16"][fmt]
    precision = "bf16" if speedup >= MARGIN else "fp32"
    need = "" if precision == "bf16" else f", bf16 needs >= {MARGIN:g}x"
    return Choice(precision, f"bf16 {speedup:.2f}x fp32 ({fmt}) on {entry['cpu']}{need}, measured "
                             f"{entry['measured']}, cached in {path}")


def cuda_choice() -> Choice:
    import torch

    name = torch.cuda.get_device_name()
    if torch.cuda.is_bf16_supported():
        return Choice("bf16", f"CUDA device {name} supports bf16")
    return Choice("fp32", f"CUDA device {name} has no bf16 support (fp16 needs loss scaling: ask for it explicitly)")


def auto_choice(device, *, channels_last: bool = False) -> Choice:
    """What `auto` means for `device` (a torch.device or its name), and why."""
    import torch

    forced = os.environ.get(ENV_FORCE)
    if forced:
        if forced not in ("fp32", "bf16"):
            from latentae.errors import LatentaeError

            raise LatentaeError(f"{ENV_FORCE} must be fp32 or bf16, got {forced!r}")
        return Choice(forced, f"{ENV_FORCE}={forced}")
    kind = torch.device(device).type
    if kind == "cuda":
        return cuda_choice()
    if kind == "cpu":
        return cpu_choice(channels_last)
    return Choice("fp32", f"no bf16 measurement for {kind} devices")


def resolve_precision(requested: str, *, device, channels_last: bool = False) -> str:
    """`requested` itself, or for `auto` the choice for `device` (printed once per process with its reason)."""
    if requested != AUTO:
        return requested
    import torch

    key = (torch.device(device).type, channels_last, os.environ.get(ENV_FORCE))
    if key not in _chosen:
        _chosen[key] = choice = auto_choice(device, channels_last=channels_last)
        if os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"precision auto -> {choice.precision} ({choice.reason})", file=sys.stderr, flush=True)
    return _chosen[key].precision
