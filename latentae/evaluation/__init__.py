"""Reconstruction evaluation: metrics (PSNR, SSIM, LPIPS, rFID), bottleneck statistics, reports.

    from latentae.evaluation import evaluate, EvalResult, write_report
"""
from latentae.evaluation.evaluator import DEFAULT_METRICS, EvalResult, evaluate, evaluate_many
from latentae.evaluation.metrics import IMAGE_METRICS
from latentae.evaluation.report import markdown, write_report

__all__ = ["DEFAULT_METRICS", "IMAGE_METRICS", "EvalResult", "evaluate", "evaluate_many", "markdown", "write_report"]
