"""The side-by-side table (latentae.evaluation.compare): a column per metric some model has, FD-DINOv2 and CMMD
among them when they were computed, n/a where a model could not compute one."""
from latentae.evaluation.compare import comparison_markdown, comparison_rows
from latentae.evaluation.evaluator import EvalResult

SPEED = {"family": "kl", "latent_shape": [4, 8, 8], "compression": 48.0, "timed_batch": 2,
         "encode_ms_per_image": 1.0, "decode_ms_per_image": 2.0}


def table(results: dict[str, EvalResult]) -> list[str]:
    rows = comparison_rows(results, {name: SPEED for name in results})
    return comparison_markdown(rows, {"data": "imgs"}).splitlines()


def result(metrics, unavailable=None) -> EvalResult:
    return EvalResult(n_images=2, skipped={}, metrics=metrics, unavailable=unavailable or {})


def test_fd_dinov2_and_cmmd_columns_when_computed():
    lines = table({"a": result({"psnr": 25.0, "ssim": 0.8, "fd_dinov2": 12.3456, "cmmd": 0.04567}),
                   "b": result({"psnr": 24.0, "ssim": 0.7, "cmmd": 0.1},
                               {"fd_dinov2": "its weight files are missing"})})
    assert lines[2] == ("| model | family | PSNR | SSIM | FD-DINOv2 | CMMD | latent (C x h x w) | compression | "
                        "encode ms/img | decode ms/img |")
    assert lines[4].startswith("| `a` | kl | 25.000 | 0.8000 | 12.346 | 0.0457 | 4x8x8 |")
    assert lines[5].startswith("| `b` | kl | 24.000 | 0.7000 | n/a | 0.1000 | 4x8x8 |")


def test_no_fd_dinov2_or_cmmd_columns_when_not_asked_for():
    lines = table({"a": result({"psnr": 25.0, "lpips": 0.1, "rfid": 3.0})})
    assert lines[2].startswith("| model | family | PSNR | LPIPS | rFID | latent")
    assert lines[4].startswith("| `a` | kl | 25.000 | 0.1000 | 3.000 | 4x8x8 |")
