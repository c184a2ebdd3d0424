"""`precision: auto` (latentae.precision): the choice from a (mocked) measurement or the CUDA device, the per-machine
cache, the printed reason, and every command / config that takes it. The suite itself runs with
LATENTAE_AUTO_PRECISION=fp32 (tests/conftest.py); these tests lift that where they test the resolution."""
import json
import time

import pytest
import torch

from latentae import precision
from latentae.cli import main
from latentae.errors import LatentaeError


def seconds(nchw: float, channels_last: float | None = None) -> dict:
    """A measurement in which bf16 is `nchw` (and `channels_last`) times faster than fp32."""
    return {"fp32": {"nchw": 1.0, "channels_last": 1.0},
            "bf16": {"nchw": 1.0 / nchw, "channels_last": 1.0 / (channels_last or nchw)}}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Auto resolution for real (no forced value), an empty cache in tmp_path, a fake CPU and a mocked probe:
    set `machine.speedup` to what the probe returns; `machine.calls` counts the measurements."""

    class Machine:
        speedup = seconds(2.0)
        calls = 0
        cache = tmp_path / "cache" / "precision.json"

    def fake_measure(repeats: int = 5):
        Machine.calls += 1
        return Machine.speedup

    monkeypatch.delenv(precision.ENV_FORCE, raising=False)
    monkeypatch.setenv(precision.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "measure", fake_measure)
    monkeypatch.setattr(precision, "cpu_info", lambda: ("Fake CPU 9000", ["avx512_bf16", "avx512f"]))
    monkeypatch.setattr(precision, "_chosen", {})
    return Machine


def test_auto_follows_the_measurement(machine):
    assert precision.auto_choice("cpu").precision == "bf16"
    machine.speedup = seconds(0.55)  # the Intel Xeon kind without AMX: bf16 slower
    machine.cache.unlink()
    assert precision.auto_choice("cpu").precision == "fp32"
    machine.speedup = seconds(1.1)  # faster, but within the noise margin
    machine.cache.unlink()
    assert precision.auto_choice("cpu").precision == "fp32"
    machine.speedup = seconds(1.0, channels_last=2.0)  # judged in the memory format the command uses
    machine.cache.unlink()
    assert precision.auto_choice("cpu").precision == "fp32"
    assert precision.auto_choice("cpu", channels_last=True).precision == "bf16"
    assert precision.resolve_precision("fp16", device="cpu") == "fp16"  # explicit values are used as given
    assert precision.resolve_precision("fp32", device="cpu") == "fp32"
    assert machine.calls == 4


def test_cuda_follows_the_device(machine, monkeypatch):
    def no_measurement(repeats: int = 5):
        raise AssertionError("a GPU needs no CPU measurement")

    monkeypatch.setattr(precision, "measure", no_measurement)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    choice = precision.auto_choice("cuda")
    assert choice.precision == "bf16" and "Fake GPU" in choice.reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.auto_choice(torch.device("cuda", 0)).precision == "fp32"


def test_cache_is_written_once_and_kept_per_machine(machine, monkeypatch):
    assert precision.resolve_precision("auto", device="cpu") == "bf16"
    entries = json.loads(machine.cache.read_text())
    (key, entry), = entries.items()
    assert "Fake CPU 9000" in key and f"{torch.get_num_threads()} threads" in key and torch.__version__ in key
    assert entry["cpu"] == "Fake CPU 9000" and entry["seconds"] == seconds(2.0)

    monkeypatch.setattr(precision, "_chosen", {})  # a new process: reads the cache, measures nothing
    machine.speedup = seconds(0.5)
    assert precision.resolve_precision("auto", device="cpu") == "bf16" and machine.calls == 1

    monkeypatch.setattr(precision, "cpu_info", lambda: ("Other CPU", []))  # another machine, same home directory
    assert precision.auto_choice("cpu").precision == "fp32" and machine.calls == 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count: measured again
        precision.auto_choice("cpu")
    finally:
        torch.set_num_threads(threads)
    assert machine.calls == 3 and len(json.loads(machine.cache.read_text())) == 3


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"KEY": {"seconds": {"fp32": 1}}}', ""])
def test_corrupt_cache_is_measured_again(machine, damage):
    machine.cache.parent.mkdir(parents=True)
    machine.cache.write_text(damage.replace("KEY", precision.machine_key()))
    assert precision.auto_choice("cpu").precision == "bf16" and machine.calls == 1
    assert precision._valid(json.loads(machine.cache.read_text())[precision.machine_key()])


def test_unwritable_cache_still_resolves(machine, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(precision.ENV_CACHE_DIR, str(tmp_path / "a-file" / "cache"))  # cannot be created
    assert precision.auto_choice("cpu").precision == "bf16" and machine.calls == 1
    assert "could not cache the precision measurement" in capsys.readouterr().err
    monkeypatch.setenv(precision.ENV_CACHE_DIR, str(tmp_path / "locked"))
    (tmp_path / "locked" / "precision.json.lock").mkdir(parents=True)  # the lock file cannot be opened (root
    (tmp_path / "locked" / "precision.json").mkdir()  # ignores permissions, so a folder stands in its way)
    assert precision.auto_choice("cpu").precision == "bf16" and machine.calls == 2
    assert "could not cache the precision measurement" in capsys.readouterr().err


def test_choice_is_printed_once_with_its_reason(machine, capsys):
    for _ in range(3):
        assert precision.resolve_precision("auto", device="cpu") == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("precision auto -> bf16 (bf16 2.00x fp32 (nchw) on Fake CPU 9000, measured ")
    assert str(machine.cache) in err[0]
    machine.speedup = seconds(0.6)
    precision.resolve_precision("auto", device="cpu", channels_last=True)  # cached measurement, other format
    assert "-> bf16 (bf16 2.00x fp32 (channels_last)" in capsys.readouterr().err


def test_forced_value_and_bad_forced_value(machine, monkeypatch, capsys):
    monkeypatch.setenv(precision.ENV_FORCE, "fp32")
    assert precision.resolve_precision("auto", device="cpu") == "fp32" and machine.calls == 0
    assert f"({precision.ENV_FORCE}=fp32)" in capsys.readouterr().err
    monkeypatch.setenv(precision.ENV_FORCE, "bf32")
    with pytest.raises(LatentaeError, match=f"{precision.ENV_FORCE} must be fp32 or bf16"):
        precision.resolve_precision("auto", device="cpu")


def test_real_measurement_end_to_end(tmp_path, monkeypatch, capsys):
    """The real probe on this machine: some choice, with its measured ratio, written to the cache, read back."""
    monkeypatch.delenv(precision.ENV_FORCE, raising=False)
    monkeypatch.setenv(precision.ENV_CACHE_DIR, str(tmp_path))
    monkeypatch.setattr(precision, "_chosen", {})
    chosen = precision.resolve_precision("auto", device="cpu")
    assert chosen in ("fp32", "bf16")
    entry = json.loads((tmp_path / "precision.json").read_text())[precision.machine_key()]
    ratio = entry["seconds"]["fp32"]["nchw"] / entry["seconds"]["bf16"]["nchw"]
    assert chosen == ("bf16" if ratio >= precision.MARGIN else "fp32")
    assert f"bf16 {ratio:.2f}x fp32 (nchw)" in capsys.readouterr().err
    entry_again, _, measured = precision.cpu_measurement()
    assert entry_again == entry and not measured


# ---------------------------------------------------------------------------------------------- users of auto


def test_configs_accept_auto_and_default_to_it(tmp_path):
    from latentae.config import ConfigError
    from latentae.trainer.config import TrainConfig, load_run_config

    assert TrainConfig().mixed_precision == "auto"
    tiny = str(precision.Path(__file__).resolve().parents[1] / "configs" / "tiny-kl.yaml")
    for value in ("auto", "fp32", "bf16", "fp16"):
        assert load_run_config(tiny, [f"train.mixed_precision={value}"]).train.mixed_precision == value
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_run_config(tiny, ["train.mixed_precision=bf32"])


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_trainer_resolves_auto(tmp_path, monkeypatch, forced):
    from accelerate.state import AcceleratorState, GradientState

    from latentae.runtime import resolve
    from latentae.trainer.config import RunConfig
    from latentae.trainer.loop import make_accelerator

    monkeypatch.setenv(precision.ENV_FORCE, forced)
    monkeypatch.setattr(precision, "_chosen", {})
    cfg = RunConfig(output_dir=str(tmp_path))
    try:
        placement = resolve(precision=cfg.train.mixed_precision, channels_last=cfg.train.channels_last)
        acc = make_accelerator(cfg, placement.precision)
        assert placement.precision == forced and cfg.train.mixed_precision == "auto"  # the config stays as given
        assert acc.mixed_precision == {"fp32": "no"}.get(forced, forced)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_encode_records_the_resolved_precision(tmp_path, monkeypatch, forced):
    """The shards' settings (and so resume checks) hold what ran, never `auto`."""
    from latentae.exporting import export
    from latentae.models import KLAutoencoder

    monkeypatch.setenv(precision.ENV_FORCE, forced)
    monkeypatch.setattr(precision, "_chosen", {})
    torch.manual_seed(0)
    model_dir = export(KLAutoencoder(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
                       tmp_path / "model")
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 90)).save(tmp_path / "img" / "a.png")
    out = tmp_path / "out"
    assert main(["encode", "--model", str(model_dir), "--data", str(tmp_path / "img"), "--output", str(out),
                 "--resolution", "32", "--workers", "0", "-q"]) == 0
    assert json.loads((out / "manifest.json").read_text())["precision"] == forced


def test_runtime_and_commands_default_to_auto_and_batch_4(monkeypatch):
    from latentae.cli import build_parser
    from latentae.options import DEFAULT_BATCH_SIZE
    from latentae.runtime import Runtime

    monkeypatch.setenv(precision.ENV_FORCE, "bf16")
    monkeypatch.setattr(precision, "_chosen", {})
    assert Runtime(torch.nn.Conv2d(3, 3, 1), device="cpu", precision="auto").precision == "bf16"
    with pytest.raises(LatentaeError, match="precision must be one of"):
        Runtime(torch.nn.Conv2d(3, 3, 1), device="cpu", precision="fp16")
    parser = build_parser()
    common = ["--model", "m", "--data", "d"]
    for argv in (["encode", *common, "--output", "o"], ["stats", *common], ["eval", *common],
                 ["decode", "--model", "m", "--latents", "l", "--output", "o"]):
        defaults = parser.parse_args(argv)
        assert defaults.precision == "auto" and defaults.batch_size == DEFAULT_BATCH_SIZE == 4, argv
        assert parser.parse_args([*argv, "--precision", "fp32"]).precision == "fp32", argv
