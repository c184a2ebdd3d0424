"""Reconstruction quality on real photos: reference configurations trained for a fixed budget, held-out metrics.

Every configuration trains a small autoencoder on real photos (Tiny ImageNet 64-px shards and BSDS500 train
crops from --data-root; BSDS500 train alone at 256 px) and is measured during training on held-out photos
(BSDS500 test and Kodak, shorter side resized to the training resolution and center-cropped: never a training
image) with `latentae.evaluation.evaluate` (PSNR, SSIM, KL / active channels or codebook usage) and a
weight-free sharpness statistic (latentae.evaluation.sharpness). The budgets, configurations and the published
claims judged in the report, with their criteria, are data: study.yaml beside this file. Groups of configurations:

  comparison   latentae at its defaults against the plain loop of the diffusers example script (diffusers
               AutoencoderKL, L1 + KL, AdamW with the script's defaults, fp32, no EMA), same architecture, initial
               weights, data and training minutes; ablation rows turn one latentae default off each
  codebook     LlamaGen: l2-normalized 8-d codes against plain 256-d codes; FSQ against VQ of the same size;
               the rotation trick, SimVQ, IBQ, BSQ and the two-level VQ-VAE-2 against plain 256-d VQ of the same code count
  kl-weight    the KL weight trade-off (three weights)
  collapse     at high weights (1 and 10): free bits and cyclical annealing against the constant weight
  gan          adversarial term off vs on at equal steps (the off run is kl-1e-6)
  diffusability  regularizers that make latents easier to diffuse, each on kl-1e-6 at equal steps: EQ-VAE, scale
               equivariance, noise-robust decoding (l-DeTok); then the diffusability probe on their latents (below)

The diffusability probe (`latentae.probe`, the budget's `probe` preset) runs after the trainings on the saved models
of kl-1e-6 and the diffusability rows, all in one probe call (same seed, DiT, budget and Tiny ImageNet latents for
every model; latents standardized per channel, since the export's default scaling factor is not measured): it
writes OUTPUT/probe/ and is reused while those models' results are unchanged, so `--report-only` probes models
trained by an earlier run.

The comparison group trains for --budget's seconds of training (evaluation excluded), the others for its steps.
LPIPS is not used: its trunk weights are not available offline (a random-trunk LPIPS is not LPIPS), so every
configuration trains with loss.perceptual_weight=0 and reports no perceptual metric.

Each configuration runs in its own process (accelerate's state, precision and peak memory stay its own) and
writes OUTPUT/runs/NAME/result.json and its final model (OUTPUT/runs/NAME/model/, latentae's export format);
the report (report.md, results.json, PNG plots and grids) is then rebuilt
from every result in OUTPUT made with the same budget, so `--only a,b` runs the study in pieces.
"""
from .command import add_arguments, run

__all__ = ["add_arguments", "run"]
