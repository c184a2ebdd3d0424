#!/usr/bin/env bash
# The main job end to end on an embedded default dataset (procedurally generated: no download, no ../shared):
# set up the environment, make shards, train a tiny KL autoencoder on CPU for a few minutes, evaluate it, export
# it, and reconstruct an image through diffusers.AutoencoderKL.from_pretrained. Usage: bash scripts/quickstart.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export HF_HUB_OFFLINE=1
OUT="${1:-quickstart-out}"
STEPS="${QUICKSTART_STEPS:-600}"
rm -rf "$OUT"

echo "== 1/5 data: procedural images -> webdataset shards"
latentae demo-data "$OUT/images/train" --count 960 --size 80 --seed 0
latentae demo-data "$OUT/images/val" --count 64 --size 80 --seed 1
latentae shards "$OUT/images/train" --output "$OUT/shards/train" --samples-per-shard 240 --shuffle --quiet
latentae shards "$OUT/images/val" --output "$OUT/shards/val" --quiet

echo "== 2/5 train: configs/tiny-kl.yaml for $STEPS steps on CPU"
latentae train --config configs/tiny-kl.yaml output_dir="$OUT/run" \
  "data.train=$OUT/shards/train/data-{00000..00003}.tar" "data.val=$OUT/shards/val" \
  train.max_steps="$STEPS" eval.every=200 train.checkpoint_every=200

echo "== 3/5 evaluate the export on the held-out shards"
latentae eval --model "$OUT/run/export" --data "$OUT/shards/val" --resolution 64 \
  --metrics psnr,ssim,lpips,rfid --output "$OUT/eval"

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
  evaluation  $OUT/eval                      (report.md, report.json, grid.png, psnr_hist.png)
  diffusers   $OUT/diffusers_reconstruction.png
  TensorBoard: tensorboard --logdir $OUT/run/logs
EOT
