#!/usr/bin/env bash
# One-GPU check of the multi-GPU paths and of memory at a real vocabulary, in minutes. Prints one line per check:
#   PASS|FAIL <check> <trainer> steps=<n> peak_gpu_mib=<m> time_s=<t> <detail>
# then the RGSD vs TRL SDFT table (step time and GPU peak at V=151,936 with 4,096-token completions).
#
#   bash benchmarks/gpu_check.sh                 # everything
#   CHECKS="zero3 fsdp2" bash benchmarks/gpu_check.sh
#
# Needs: a CUDA GPU, this repository installed with its extras (`pip install -e '.[deepspeed,vllm]'`); vLLM only for
# the `vllm` check. Offline: the models are built locally. Each check runs in its own process; a failing check does
# not stop the others, and the exit status is the number of failed checks.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORKDIR:-$(mktemp -d -t trl-rubric-gpu-check-XXXX)}
STEPS=${STEPS:-20}
CHECKS=${CHECKS:-"zero3 fsdp2 vllm memory"}
LOG="$WORK/log"
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 USE_HUB_KERNELS=NO HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

echo "gpu_check: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1); work dir $WORK"
$PY benchmarks/gpu_check.py prepare "$WORK" >"$LOG/prepare.txt" 2>&1 || { echo "FAIL prepare (see $LOG/prepare.txt)"; exit 1; }

run_check() {  # run_check <label> <trainer> <command...>: one result line, the full log in $LOG
  local label=$1 trainer=$2
  shift 2
  local out="$LOG/$label-$trainer.txt"
  timeout "${CHECK_TIMEOUT:-900}" "$@" >"$out" 2>&1
  local rc=$? line
  line=$(grep -E '^(PASS|FAIL) ' "$out" | tail -1)
  if [ -z "$line" ]; then
    line="FAIL $label $trainer no result line (exit $rc; last error: $(grep -E 'Error|error' "$out" | tail -1 | cut -c1-200))"
  fi
  echo "$line"
  case $line in PASS*) ;; *) failed=$((failed + 1)) ;; esac
}

launch() {  # launch <accelerate config> <label> <trainer> [extra args]
  local config=$1 label=$2 trainer=$3
  shift 3
  run_check "$label" "$trainer" accelerate launch --config_file "$config" --num_processes 1 \
    benchmarks/gpu_check.py train "$WORK" --trainer "$trainer" --steps "$STEPS" --label "$label" "$@"
}

for check in $CHECKS; do
  case $check in
    zero3) for t in rgsd grpo; do launch recipes/accelerate/zero3.yaml zero3 "$t"; done ;;
    fsdp2) for t in rgsd grpo; do launch recipes/accelerate/fsdp2.yaml fsdp2 "$t"; done ;;
    vllm)
      if $PY -c "import vllm" >/dev/null 2>&1; then
        for t in rgsd grpo; do launch recipes/accelerate/single_gpu.yaml vllm_colocate "$t" --vllm; done
      else
        echo "FAIL vllm_colocate both steps=0 peak_gpu_mib=nan time_s=0 vllm is not installed (pip install -e '.[vllm]')"
        failed=$((failed + 1))
      fi
      ;;
    memory)
      # RGSD vs TRL's SDFT: one loss forward + backward, each configuration in its own process, GPU peak included
      out="$LOG/memory.txt"
      start=$(date +%s)
      if timeout "${CHECK_TIMEOUT:-900}" $PY benchmarks/bench_rgsd_step.py --device cuda --vocab-size 151936 \
        --completion-length 4096 --batch-size 1 --hidden-size 64 --reps 3 --modes rgsd sdft \
        --markdown "$WORK/memory.md" >"$out" 2>&1; then
        echo "PASS memory rgsd_vs_sdft V=151936 T=4096 time_s=$(($(date +%s) - start)) (table below)"
        cat "$WORK/memory.md"
      else
        echo "FAIL memory rgsd_vs_sdft V=151936 T=4096 time_s=$(($(date +%s) - start)) $(grep -E 'Error' "$out" | tail -1 | cut -c1-200)"
        failed=$((failed + 1))
      fi
      ;;
    *) echo "FAIL $check unknown check (choose from: zero3 fsdp2 vllm memory)"; failed=$((failed + 1)) ;;
  esac
done
echo "gpu_check: $failed failed; logs in $LOG"
exit "$failed"
