#!/usr/bin/env bash
# The sharded recipes on every GPU of this machine: each method under each sharding (SFT, then DPO from it), and
# the crash test under the launcher the training asset uses. One JSON and one log per run in $OUT (bench/out).
#   source bench/device_setup.sh; bash bench/gpu_sharded.sh
#   DISTS="zero2" MODELS="1b" RESUME="" bash bench/gpu_sharded.sh
#   PROFILE=3 DISTS=zero3 MODELS=135m METHODS=lora DPO_STEPS=0 RESUME="" bash bench/gpu_sharded.sh  (profile steps 5-7)
# Each run has a time limit; a run that hangs prints every thread's stack before it is stopped.
set -u
out=${OUT:-bench/out}
mkdir -p "$out"
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
recipe='{"batch_size": 4, "max_length": 1024, "attn_implementation": "sdpa", "packing": false, "padding_free": true}'
limit=${LIMIT:-200}
for dist in ${DISTS:-zero3 fsdp}; do
  for model in ${MODELS:-135m 1b}; do
    name="$dist-$model"
    echo "== $name on $gpus GPUs"
    rm -rf "/tmp/sharded-$name"  # a checkpoint left by an earlier run on this machine would be resumed from
    timeout $((limit + 20)) torchrun --standalone --nproc-per-node="$gpus" bench/gpu_methods.py --models "$model" \
      --methods ${METHODS:-lora full} --distributed "$dist" --steps "${STEPS:-20}" --dpo-steps "${DPO_STEPS:-5}" \
      --recipe "$recipe" ${PROFILE:+--profile "$PROFILE"} --stacks-after "$limit" --work "/tmp/sharded-$name" --out "$out/$name.json" >"$out/$name.log" 2>&1
    echo "exit $?"
    grep -E "^\{'model'|failed:|Error|error" "$out/$name.log" | grep -v Warning | tail -8
  done
done
for case in ${RESUME-zero3:lora fsdp:full}; do
  dist=${case%%:*} method=${case##*:}
  echo "== resume $dist $method on $gpus GPUs"
  python3 bench/gpu_resume.py --distributed "$dist" --method "$method" --timeout "$limit" \
    --out "$out/resume-$dist-$method.json" >"$out/resume-$dist-$method.log" 2>&1
  echo "exit $?"
  grep -E '"ok"|resume_line|returncode' "$out/resume-$dist-$method.log"
  for attempt in first second; do cp "/tmp/bench-resume/$dist-$method/$attempt.log" "$out/resume-$dist-$method.$attempt.log"; done
done
