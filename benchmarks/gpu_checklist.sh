#!/usr/bin/env bash
# The three items of shared/gpu-checklist.md in one call of the device tool (a lent GPU is short: about
# 15 minutes in all), in the order that keeps the timings clean:
#
#   1. throughput (gpu_throughput.py) alone on the GPU, cases cut at THROUGHPUT_S seconds;
#   2. the paper regime (gpu_paper_regime.py), planned from 1's figures to end before TOTAL_S, and
#      beside it the correctness checks, whose speed does not matter: the test suite on CUDA
#      (device auto = cuda), and smoke runs of what the suite cannot reach with one GPU
#      (NCCL with one process under torchrun, torch.compile with feature taps and a teacher).
#
# Everything comes back under OUT in at most 8 files (the device tool's limit).
#
#   benchmarks/gpu_checklist.sh OUT DATA_DIR [TOTAL_S] [THROUGHPUT_S]
#
# DATA_DIR holds fashion-mnist/ (the IDX files); python3 must have torch with CUDA, pytest, pytest-xdist,
# pytest-timeout and hypothesis. Run from the repository root; nothing is installed. GPU_THROUGHPUT_ARGS,
# GPU_REGIME_ARGS and GPU_PYTEST_ARGS add options to each stage (to try the script small on a CPU).
set -u
OUT=$1
export SELFDISTILL_DATA=$(cd "$2" && pwd)  # absolute: stage 2 runs from benchmarks/
TOTAL=${3:-560}
THROUGHPUT=${4:-130}
START=$(date +%s)
left() { echo $((TOTAL - ($(date +%s) - START))); }
export PYTHONPATH="$PWD/src:$PWD/benchmarks" PYTHONUNBUFFERED=1
WORK=$(mktemp -d)

{ date -u; nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  (cd "$SELFDISTILL_DATA" && sha256sum -c SHA256SUMS); nproc; free -g; } > "$OUT/machine.txt" 2>&1

echo "== 1. throughput ($THROUGHPUT s of cases)"
timeout $((THROUGHPUT + 90)) python3 benchmarks/gpu_throughput.py --deadline-s "$THROUGHPUT" \
    --out "$OUT/gpu_throughput.jsonl" ${GPU_THROUGHPUT_ARGS:-} > "$OUT/throughput.log" 2>&1
tail -n 45 "$OUT/throughput.log"; echo "at $(($(date +%s) - START)) s"

BUDGET=$(($(left) - 45))
echo "== 2. paper regime (budget $BUDGET s) beside the tests and smoke runs"
(cd benchmarks && timeout "$((BUDGET + 15))" python3 gpu_paper_regime.py --budget-s "$BUDGET" \
    --throughput "$OUT/gpu_throughput.jsonl" --out "$WORK/regime" ${GPU_REGIME_ARGS:-}) > "$OUT/regime.log" 2>&1 &
REGIME=$!

(
  set -x
  python3 -m selfdistill train --model resnet8 --dataset fashion-mnist-mini --epochs 1 --out "$WORK/teacher" \
      --set train.progress=false
  python3 -m selfdistill train --method sp --teacher "$WORK/teacher" --model resnet8 --dataset fashion-mnist-mini \
      --epochs 2 --out "$WORK/sp-compiled" --set train.compile=true --set train.progress=false
  python3 -m selfdistill train --method dlb+dsr --model resnet8 --dataset fashion-mnist-mini --epochs 2 \
      --out "$WORK/dsr-compiled" --set train.compile=true --set train.progress=false
  python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m selfdistill train --method dml+dlb \
      --model resnet8 --dataset fashion-mnist-mini --epochs 2 --out "$WORK/nccl" --set train.progress=false
  python3 -c "import json,sys; [print(p, {k: v for k, v in json.load(open(p)).items() if k in ('test_top1', 'device', 'amp', 'world_size')}) for p in sys.argv[1:]]" \
      "$WORK"/{sp-compiled,dsr-compiled,nccl}/metrics.json
) > "$OUT/smoke.log" 2>&1
echo "smoke runs: exit $? at $(($(date +%s) - START)) s (smoke.log)"; grep -E "^\+|Error|error" "$OUT/smoke.log" | tail -n 12

# -v: a line per finished test, so that a suite cut by the timeout still says what passed and failed
TESTS_S=$(($(left) - 50)); [ "$TESTS_S" -lt 30 ] && TESTS_S=30
timeout "$TESTS_S" python3 -m pytest -v --tb=short -n 6 -p no:cacheprovider --timeout 180 ${GPU_PYTEST_ARGS:-} \
    > "$OUT/pytest.log" 2>&1
echo "tests: exit $? at $(($(date +%s) - START)) s (pytest.log)"; grep -E "FAILED|ERROR" "$OUT/pytest.log" | tail -n 30
tail -n 3 "$OUT/pytest.log"

wait $REGIME
echo "regime: exit $?"
pkill -f "selfdistill train" 2>/dev/null
(cd benchmarks && python3 gpu_paper_regime.py --budget-s "$BUDGET" --throughput "$OUT/gpu_throughput.jsonl" \
    --out "$WORK/regime" --table-only ${GPU_REGIME_ARGS:-}) >> "$OUT/regime.log" 2>&1
tail -n 12 "$OUT/regime.log"
tar czf "$OUT/runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='events.*' . 2>/dev/null
echo "done in $(($(date +%s) - START)) s"
