#!/usr/bin/env bash
# The main job end to end on an embedded default dataset (procedurally generated photographs: no download, no
# ../shared): set up the environment, make shards, train a tiny KL autoencoder on CPU for about 5 minutes, keep
# the weights of its best validation, evaluate them on held-out images, export them, and reconstruct an image
# through diffusers.AutoencoderKL.from_pretrained. Usage: bash scripts/quickstart.sh [OUT]
#
# Settings beyond configs/tiny-kl.yaml (whose optimizer settings were measured for this budget, see its header):
# no adversarial term (loss.disc.weight=0): on a model this young the GAN phase only lowers PSNR and SSIM (it
# sharpens converged reconstructions, hundreds of thousands of steps into the real presets); and
# train.export=best, so the export holds the best validation's weights whatever the last steps did.
# On a machine other jobs keep busy, training takes only the cores they leave free (latentae/threads.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1
OUT="${1:-quickstart-out}"
STEPS="${QUICKSTART_STEPS:-1000}"
rm -rf "$OUT"
START=$SECONDS

echo "== 1/5 data: procedural photographs -> webdataset shards"
latentae demo-data "$OUT/images/train" --count 960 --size 80 --seed 0
latentae demo-data "$OUT/images/val" --count 64 --size 80 --seed 1
latentae shards "$OUT/images/train" --output "$OUT/shards/train" --samples-per-shard 240 --shuffle --quiet
latentae shards "$OUT/images/val" --output "$OUT/shards/val" --quiet

echo "== 2/5 train: configs/tiny-kl.yaml for $STEPS steps on CPU, no GAN, export = best validation PSNR"
TRAIN_START=$SECONDS
latentae train --config configs/tiny-kl.yaml output_dir="$OUT/run" \
  "data.train=$OUT/shards/train/data-{00000..00003}.tar" "data.val=$OUT/shards/val" \
  train.max_steps="$STEPS" eval.every=200 train.checkpoint_every=200 loss.disc.weight=0 train.export=best \
  data.num_workers=0  # decoding 80-px PNGs in-process costs less than a worker process competing for 2 cores
TRAIN_SECONDS=$((SECONDS - TRAIN_START))

echo "== 3/5 evaluate the export on the held-out shards"
latentae eval --model "$OUT/run/export" --data "$OUT/shards/val" --resolution 64 --metrics psnr,ssim \
  --output "$OUT/eval"  # LPIPS and rFID need downloaded weights (latentae fetch-weights)

echo "== 4/5 load the export with diffusers and reconstruct an image"
python - "$OUT" <<'PY'
import sys
import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

out = sys.argv[1]
vae = AutoencoderKL.from_pretrained(f"{out}/run/export").eval()
image = Image.open(f"{out}/images/val/demo-00000.png").convert("RGB").resize((64, 64), Image.BICUBIC)
x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
with torch.no_grad():
    latents = vae.encode(x).latent_dist.mode()
    rec = vae.decode(latents).sample.clamp(-1, 1)
mse = ((rec - x) ** 2).mean().item()
psnr = 10 * np.log10(4 / mse)
pair = torch.cat([x, rec], dim=3)[0].permute(1, 2, 0).add(1).mul(127.5).round().byte().numpy()
Image.fromarray(pair).save(f"{out}/diffusers_reconstruction.png")
print(f"diffusers AutoencoderKL: latents {tuple(latents.shape)}, PSNR {psnr:.2f} dB, "
      f"saved {out}/diffusers_reconstruction.png (input | reconstruction)")
PY

echo "== 5/5 where everything went"
cat <<EOT
  images      $OUT/images/{train,val}        (procedural PNGs)
  shards      $OUT/shards/{train,val}        (webdataset tars)
  run         $OUT/run                       (config.yaml, checkpoints/, logs/ for TensorBoard)
  export      $OUT/run/export                (diffusers AutoencoderKL: config.json + safetensors)
  evaluation  $OUT/eval                      (report.md, report.json, per_image.csv, psnr_hist.png)
  diffusers   $OUT/diffusers_reconstruction.png
  TensorBoard: tensorboard --logdir $OUT/run/logs
took $(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s, training $((TRAIN_SECONDS / 60)) min $((TRAIN_SECONDS % 60)) s \
($(python -c "import os; print(os.cpu_count(), 'CPUs, load average', *(f'{x:.1f}' for x in os.getloadavg()))"))
look at the held-out images and their reconstructions: $OUT/eval/grid.png (rows: input, reconstruction, difference x4)
EOT
