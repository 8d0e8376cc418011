#!/usr/bin/env bash
# The training that needs more than 2 CPU cores, as one script for a lent GPU machine (it ran once on one
# NVIDIA H200 with 16 cores; the results it produced are in benchmarks/results/ and mess_edge/assets/):
#   1. the Tables 5/6 ablation (benchmarks/training_ablation.py), 3 seeds, its 24 runs 9 at a time;
#   2. longer two-stage runs of cpu-mbv2 and cpu-drn for benchmarks/early_exit.py.
# Every stage has a time limit so the script ends by DEADLINE_S and always packs what it has into
# $OUT/results.tar.gz (logs, tables.json, eval JSON, checkpoints without optimizer state).
#
#   OUT=runs/gpu-out bash benchmarks/gpu_training.sh          # python3 must have torch (+ CUDA)
#   SMOKE=1 OUT=/tmp/o bash benchmarks/gpu_training.sh        # a 2-minute check of the script on a CPU
set -u
OUT=${OUT:-runs/gpu-out}
W=${WORK:-runs/gpu}
DEADLINE=${DEADLINE_S:-420}
S1=${S1_EPOCHS:-40}; S2=${S2_EPOCHS:-10}; AB1=${AB_S1_EPOCHS:-20}; AB2=${AB_S2_EPOCHS:-5}; JOBS=${JOBS:-9}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD
mkdir -p "$OUT" "$W"
t0=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - t0) )); }
me() { $PY -m mess_edge.cli "$@"; }

{ nvidia-smi 2>&1 | head -15; $PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() \
and torch.cuda.get_device_name(0))"; echo "cores $(nproc)"; } > "$W/machine.txt" 2>&1
if [ -n "${SMOKE:-}" ]; then
  me data digitscenes --out "$W/data" --n-train 32 --n-cal 16 --n-test 16 > "$W/data.log" 2>&1
  S1=1; S2=1; AB1=1; AB2=1; JOBS=3; DEADLINE=900
else
  me data digitscenes --out "$W/data" > "$W/data.log" 2>&1  # the demo's data: 2000/500/500 at 128x128, seed 0
fi || { echo "data generation failed"; cat "$W/data.log"; exit 1; }
echo "data ready at $(( $(date +%s) - t0 )) s"

long() {  # two stages of one preset; stage 1 gets at most 60% of the time left, stage 2 what remains
  local p=$1
  timeout $(( $(left) * 60 / 100 )) "$PY" -m mess_edge.cli train --preset "$p" --data "$W/data" --stage 1 \
    --epochs "$S1" --val-images 100 --out "$W/$p-s1.pt" > "$W/$p-s1.log" 2>&1
  echo "$p stage 1 rc $? at $(( $(date +%s) - t0 )) s"
  timeout $(( $(left) - 45 )) "$PY" -m mess_edge.cli train --stage 2 --init "$W/$p-s1.pt" --data "$W/data" \
    --space small --epochs "$S2" --val-images 100 --out "$W/$p-s2.pt" > "$W/$p-s2.log" 2>&1
  echo "$p stage 2 rc $? at $(( $(date +%s) - t0 )) s"
  for s in s1 s2; do
    [ -f "$W/$p-$s.pt" ] && me eval "$W/$p-$s.pt" --data "$W/data" --json > "$W/$p-$s.eval.json" 2>> "$W/$p-s2.log"
  done
  echo "$p done at $(( $(date +%s) - t0 )) s"
}

long cpu-mbv2 &
long cpu-drn &
timeout $(( $(left) - 30 )) "$PY" benchmarks/training_ablation.py --data "$W/data" --jobs "$JOBS" --no-cost \
  --stage1-epochs "$AB1" --stage2-epochs "$AB2" --work "$W/abl" > "$W/ablation.log" 2>&1
echo "ablation rc $? at $(( $(date +%s) - t0 )) s"
wait

# Checkpoints without optimizer state (a third of the size); the small files in one archive, the cpu-drn
# checkpoints (tens of MB: its stage-2 heads are wide) beside it in parts of 15 MB.
mkdir -p "$W/pack"
$PY - "$W" <<'EOF'
import glob, os, sys, torch
w = sys.argv[1]
for p in glob.glob(os.path.join(w, "*.pt")):
    c = torch.load(p, map_location="cpu", weights_only=True)
    c["optimizer"] = None
    torch.save(c, os.path.join(w, "pack", os.path.basename(p)))
EOF
cp "$W"/*.log "$W"/*.json "$W/machine.txt" "$W/pack/" 2>/dev/null
[ -f "$W/abl/tables.json" ] && cp "$W/abl/tables.json" benchmarks/results/training_ablation.md "$W/pack/"
cp "$W/abl"/*.pt.json "$W/pack/" 2>/dev/null
for f in "$W"/pack/cpu-drn-*.pt; do [ -f "$f" ] && split -b 15M -d "$f" "$OUT/$(basename "$f").part" && rm "$f"; done
tar -czf "$OUT/results.tar.gz" -C "$W" pack
cp "$W/ablation.log" "$W/machine.txt" "$OUT/" 2>/dev/null
[ -f "$W/abl/tables.json" ] && cat benchmarks/results/training_ablation.md
echo "packed at $(( $(date +%s) - t0 )) s"; ls -la "$OUT"
