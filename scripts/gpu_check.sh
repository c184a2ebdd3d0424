#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md in one command, within 8 minutes on one lent GPU: the train-step and encode
# benchmarks at 256 px (latentae's defaults against the plain fp32 loop: scripts/benchmark.py train / encode) and
# `scripts/benchmark.py quality --budget gpu` cut to what fits (--only), each section capped so the whole run
# ends in time. Writes OUT/gpu-check.md (the GPU by nvidia-smi, torch / CUDA versions, then each benchmark's
# command and figures, the quality report included: paste it into BENCHMARKS.md), OUT/gpu-check.log (everything
# printed), and the quality run's quality-results.json and PNG plots.
#
# On a lent GPU machine (the `device` tool; it has no internet and no ../shared). Here, once:
#   echo /.gpu-data >> .git/info/exclude && ln -sfn ../shared/data .gpu-data   # the photos travel through the link
#   bash scripts/gpu_check.sh --fetch-wheels    # .whl/ (ignored): diffusers, lpips, webdataset, ... as pure-Python
#                                               # wheels, the versions of this .venv, for the GPU image's Python 3.12
# then the device tool's `run` with
#   command:   bash scripts/gpu_check.sh
#   carry:     [".whl", ".gpu-data/bsds500", ".gpu-data/kodak"]
#   timeout_s: 560
# There it installs the carried wheels beside the image's torch and writes to $OUT (what comes back).
#
# Anywhere, without a GPU: `bash scripts/gpu_check.sh --dry-run`: the same sections at tiny sizes on the CPU (a
# minute or two; tests/test_gpu_check.py runs it). Without photos the encode benchmark reads procedural images
# and the quality section is skipped, each said in the figures.
#
# Options: --dry-run; --out DIR (default: $OUT when set, else gpu-check-out); --data-root DIR (photos: default
# .gpu-data when present, else ../shared/data); --only NAMES (quality configurations, default below);
# --fetch-wheels (download .whl/ here and stop).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
OUT_DIR="${OUT:-gpu-check-out}"
DATA=""
QUALITY_ONLY="kl-1e-6"  # a step-bound reference KL run (3000 steps at 256 px); the comparison group's configurations
# train 300 s each and do not fit beside the speed benchmarks
WHEELS=(diffusers lpips webdataset braceexpand importlib_metadata torch-fidelity)  # what the GPU image lacks
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    --data-root) DATA="$2"; shift ;;
    --only) QUALITY_ONLY="$2"; shift ;;
    --fetch-wheels)
      source scripts/env.sh
      pins=$(python -c "import importlib.metadata as m, sys; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" \
             "${WHEELS[@]}")
      python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl $pins
      echo "wheels in .whl/ ($(du -sh .whl | cut -f1)): $pins"
      exit 0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$DATA" ]; then
  if [ -d .gpu-data ]; then DATA=.gpu-data; else DATA=../shared/data; fi
fi

# ---------------------------------------------------------------------------------------- environment
PY=python3
if ! "$PY" -c "import torch, diffusers, lpips, webdataset" 2>/dev/null; then
  if "$PY" -c "import torch" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/gpu-check-site.XXXX)  # the GPU image: its torch, plus the carried wheels
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    source scripts/env.sh  # the project's .venv (created on first use)
    PY=python
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
MD="$OUT_DIR/gpu-check.md"
LOG="$OUT_DIR/gpu-check.log"
WORK=$(mktemp -d /tmp/gpu-check.XXXX)
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
START=$SECONDS
if [ $DRY = 1 ]; then TOTAL=900; else TOTAL=470; fi  # seconds for all sections (GPU: 8 minutes with the set-up;
# the dry run: caps for a machine other jobs share, ~1 minute when idle)

# Run one section: its output goes to the log and, in a text block, to the figures file. Each section gets at most
# its own cap and never more than what is left of TOTAL (less what the later sections are promised).
section() {  # TITLE CAP RESERVED_FOR_LATER CMD...
  local title=$1 cap=$2 later=$3; shift 3
  local left=$((TOTAL - (SECONDS - START) - later)) t0=$SECONDS rc=0 shown="$*"
  [ $left -lt $cap ] && cap=$left
  echo "== $title (at most ${cap} s)" | tee -a "$LOG"
  { echo; echo "## $title"; echo; echo '```text'; echo "\$ python ${shown#"$PY "}"; } >>"$MD"
  if [ $cap -lt 10 ]; then
    echo "skipped: no time left in the ${TOTAL}-s budget" | tee -a "$LOG" "$MD" >/dev/null
  else
    timeout -k 10 "$cap" "$@" >"$WORK/section.out" 2>&1 || rc=$?
    cat "$WORK/section.out" >>"$LOG"
    grep -v -e '^\s*$' -e 'it/s\]' -e 'img/s\]' "$WORK/section.out" >>"$MD" || true  # no progress bars
    if [ $rc = 124 ] || [ $rc = 137 ]; then
      echo "stopped at its time cap (${cap} s)" >>"$MD"
    elif [ $rc != 0 ]; then
      echo "failed (exit $rc): the end of its output is above" >>"$MD"
    fi
  fi
  echo '```' >>"$MD"
  echo "   $title: $((SECONDS - t0)) s, exit $rc" | tee -a "$LOG"
}

# ---------------------------------------------------------------------------------------- the machine
{
  echo "# GPU check: \`bash scripts/gpu_check.sh$([ $DRY = 1 ] && echo ' --dry-run')\`"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1) (name, driver, memory)"
  else
    echo "- GPU: none (nvidia-smi absent or failing): CPU figures only"
  fi
  "$PY" - <<'PY'
import os, platform, torch
from latentae.precision import machine_description
cuda = torch.cuda.is_available()
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN "
      f"{torch.backends.cudnn.version() if cuda else 'none'}; device seen by torch: "
      f"{torch.cuda.get_device_name(0) if cuda else 'cpu'}; Python {platform.python_version()}")
print(f"- host: {machine_description()}, {os.cpu_count()} CPUs")
PY
} >"$MD" 2>>"$LOG"

# ---------------------------------------------------------------------------------------- photos for encode
PHOTOS="$DATA"
if ! compgen -G "$DATA/bsds500/train/*.jpg" >/dev/null; then
  PHOTOS="$WORK/photos"  # the encode benchmark reads DATA_ROOT/bsds500/train/*.jpg: procedural JPEGs stand in
  "$PY" - "$PHOTOS/bsds500/train" "$([ $DRY = 1 ] && echo 64 || echo 320)" "$([ $DRY = 1 ] && echo 4 || echo 96)" <<'PY'
import sys
from pathlib import Path
from latentae.demo import demo_image
folder, size, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
folder.mkdir(parents=True)
for i in range(count):
    demo_image(i, size).save(folder / f"demo-{i:05d}.jpg", quality=90)
PY
  echo "(no photos in $DATA/bsds500/train: the encode benchmark reads procedural images)" | tee -a "$MD"
fi

# ---------------------------------------------------------------------------------------- the sections
if [ $DRY = 1 ]; then
  section "train step (dry run: tiny-kl at 32 px)" 300 300 "$PY" scripts/benchmark.py train \
    --preset configs/tiny-kl.yaml --resolution 32 --batch-size 2 --warmup 1 --steps 2 --repeats 1 --threads 1
  section "encode (dry run: a tiny encoder at 64 px)" 300 300 "$PY" scripts/benchmark.py encode \
    --data-root "$PHOTOS" --images 4 --per-shard 2 --resolution 64 --block-out-channels 32,64 \
    --layers-per-block 1 --rounds 1
  QUALITY=(--budget smoke --threads 1)
else
  section "train step, SD KL-f8 at 256 px, batch 8: defaults vs the plain fp32 loop" 150 300 \
    "$PY" scripts/benchmark.py train --resolution 256 --batch-size 8 --warmup 3 --steps 10 --repeats 2
  section "encode, SD encoder at 256 px: defaults vs the plain fp32 loop" 100 240 "$PY" scripts/benchmark.py encode \
    --data-root "$PHOTOS" --images 96 --per-shard 16 --resolution 256 --rounds 2
  QUALITY=(--budget gpu)
fi
if ! "$PY" scripts/benchmark.py quality --help >/dev/null 2>&1; then
  { echo; echo "## quality"; echo; echo "skipped: scripts/benchmark.py has no quality subcommand"; } | tee -a "$MD"
elif ! { compgen -G "$DATA/bsds500/test/*" && compgen -G "$DATA/kodak/*.png"; } >/dev/null; then
  { echo; echo "## quality"; echo; echo "skipped: no photos in $DATA (bsds500/, kodak/; see the top of this script)"; } \
    | tee -a "$MD"
else
  section "quality ${QUALITY[*]}, --only $QUALITY_ONLY" 420 0 "$PY" scripts/benchmark.py quality "${QUALITY[@]}" \
    --only "$QUALITY_ONLY" --data-root "$DATA" --output "$WORK/quality"
  if [ -f "$WORK/quality/report.md" ]; then  # its plots keep their names: the report links them
    { echo; cat "$WORK/quality/report.md"; } >>"$MD"
    cp "$WORK/quality/results.json" "$OUT_DIR/quality-results.json"
    cp "$WORK/quality/"psnr_vs_*.png "$OUT_DIR/" 2>/dev/null || true
  fi
fi
echo
cat "$MD"  # the figures in the output too (the device tool returns the output's end even when files fail)
echo
echo "done in $((SECONDS - START)) s; figures: $MD (paste into BENCHMARKS.md), full output: $LOG"
