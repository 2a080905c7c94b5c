#!/usr/bin/env bash
# One short pass over every task's CUDA path (bf16 autocast, EMA, the task's eval) on a GPU machine:
# each recipe trains one epoch on the GPU and is evaluated; then a codec trained on the GPU compresses
# on the CPU and decodes in a fresh process. Prints one line per run: status, seconds, train images/s,
# peak GPU memory and the headline metric (a one-epoch figure: it checks the path, it is no result).
#   bash scripts/gpu_check.sh                 # on a machine with a GPU and visionsmith's packages
# On the lent device machine (its python3 has torch and most packages, no registry): carry the
# missing wheels in .whl/ and the offline assets in .dev/home (a VISIONSMITH_HOME), see docs/benchmarks.md.
set -uo pipefail
RUNS=${RUNS:-/tmp/gpu-runs}
PER_RUN=${PER_RUN:-75}  # seconds before a run is stopped (it then evaluates what it has, 30 s more at most)
mkdir -p "$RUNS"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HF_HUB_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
[ -d .dev/home ] && export VISIONSMITH_HOME=$PWD/.dev/home
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'bf16', torch.cuda.is_bf16_supported())"

summary() {  # run folder -> one line from run.json
  $PY - "$1" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:
    r = json.loads((run / "run.json").read_text())
except OSError:
    print("   no run.json"); sys.exit()
t, test = r.get("timing", {}), r.get("test") or {}
head = {k: round(v, 4) for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
print(f"   status {r.get('status')} train {t.get('train_s')} s, {t.get('train_img_per_s')} img/s, "
      f"peak {t.get('peak_mem_mb')} MB; test {dict(list(head.items())[:6])}")
EOF
}

train() {  # name recipe overrides...
  local name=$1 start rc; shift
  start=$(date +%s)
  timeout -k 30 "$PER_RUN" $PY -m visionsmith train "$@" --out "$RUNS/$name" >"$RUNS/$name.log" 2>&1
  rc=$?
  echo "== $name: rc $rc, $(( $(date +%s) - start )) s"
  [ $rc -ne 0 ] && tail -n 5 "$RUNS/$name.log" | cut -c1-400
  summary "$RUNS/$name"
}

train detection recipes/scenes-det.yaml train.epochs=1
train diffusion recipes/diffusion-fashion-mnist.yaml train.epochs=1 gen.eval_samples=500 gen.val_samples=200
train gan recipes/gan-fashion-mnist.yaml train.epochs=1 gen.eval_samples=500 gen.val_samples=200
train vae recipes/vae-fashion-mnist.yaml train.epochs=1 gen.eval_samples=500 gen.val_samples=200
train sr-x2 recipes/sr-photos-x2.yaml train.epochs=3
train denoise recipes/denoise-photos-nafnet.yaml train.epochs=1 enhance.baselines=false
train codec recipes/compress-hyperprior.yaml train.epochs=1 'codec.baselines=[]'
train segmentation recipes/scenes-seg.yaml train.epochs=1

# The bitstream: a GPU-trained codec codes on the CPU (float32), a fresh process decodes it.
img=$($PY -c "from visionsmith.assets import resolve; print(resolve('photo-baboon'))")
if $PY -m visionsmith compress "$RUNS/codec" "$img" -o /tmp/gpu-check.vsic >/tmp/gpu-check-c.log 2>&1 &&
   $PY -m visionsmith decompress "$RUNS/codec" /tmp/gpu-check.vsic -o /tmp/gpu-check.png >/tmp/gpu-check-d.log 2>&1; then
  echo "== codec round trip: ok"; tail -n 2 /tmp/gpu-check-c.log /tmp/gpu-check-d.log | cut -c1-300
else
  echo "== codec round trip: FAILED"; tail -n 5 /tmp/gpu-check-c.log /tmp/gpu-check-d.log | cut -c1-400
fi
