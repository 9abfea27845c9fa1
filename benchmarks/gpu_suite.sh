#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, stage by stage, on one CUDA machine that has the GPU stack
# (`pip install -r requirements/gpu.txt`) and the data sets in the cache (`recsys data fetch ...`).
#
#   bash benchmarks/gpu_suite.sh STAGE [STAGE ...]     # stages run in the order given
#   RECSYS_BENCH_OUT=runs/bench bash benchmarks/gpu_suite.sh kernels kernel-bench
#
# Timing stages (kernel-bench, plan, throughput, serving) want the GPU to themselves: run them one at a
# time. Training stages (retrieval, ablation, mimn) report metrics, not timings, and may share it.
#
#   kernels        the kernel tests compiled for the GPU (no interpreter), SHARDS=8 pytest processes side by side
#   kernel-bench   HSTU attention fwd / fwd+bwd, NN selection, SKUT, the V2 request path
#   plan           planned vs measured memory and step time per rank; the device calibration
#   throughput     HSTU training examples/s with the reference attention and the fused kernel
#   serving        HSTU ranking with the user KV cache; MIMN + UIC scoring latency; DLRM /rank under load
#   retrieval      Amazon Sports, HSTU and SASRec, 3 seeds (resumable with RESUME=--resume)
#   ablation       the TransAct ablation of the smaller synthetic world, 5 seeds
#   mimn           MIMN vs DIN vs Emb&MLP vs GRU4Rec on the long-sequence synthetic world, 3 seeds
set -euo pipefail
OUT=${RECSYS_BENCH_OUT:-runs/bench}
RESUME=${RESUME:-}
mkdir -p "$OUT"

stage_kernels() {  # SHARDS processes side by side: each new shape compiles every autotune config (CPU-bound)
  local n=${SHARDS:-8} pids=() status=0
  for i in $(seq 0 $((n - 1))); do
    python -m pytest -q -p no:cacheprovider --shard "$i/$n" tests/kernels tests/recsys/ops tests/recsys/ranking \
        tests/recsys/modules/test_transact_v2.py tests/recsys/serve/test_device.py tests/recsys/serve/test_kv_cache.py \
        > "$OUT/kernels-shard-$i.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  tail -n 2 "$OUT"/kernels-shard-*.log
  return $status
}

stage_kernel_bench() {
  python benchmarks/hstu_attention.py --out "$OUT/hstu_attention_bf16.json"
  python benchmarks/nn_select.py --out "$OUT/nn_select.json"
  python benchmarks/skut.py --out "$OUT/skut.json"
  python benchmarks/transact_serving.py --device cuda --out "$OUT/transact_serving.json"
}

stage_plan() {  # the calibration first: its bare-op time scales the plan's host constants to this machine
  python benchmarks/calibrate_device.py --out "$OUT/calibration"
  local raw bw=4800
  raw=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['raw_launch_us'])" "$OUT/calibration/calibration.json")
  if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then bw=3350; fi
  python benchmarks/plan_vs_measured.py --out "$OUT/plan-vs-measured" --raw-launch-us "$raw" --hbm-bw-gbps $bw --profile
  python benchmarks/cudnn_gru_peak.py --out "$OUT/cudnn-gru"
  python benchmarks/saved_bytes_by_op.py --model mimn --batch 1024 --max-len 50 --out "$OUT/saved-bytes-mimn.json"
  python -m pytest -q -p no:cacheprovider tests/recsys/distributed/test_gru_peak.py   # the GRU terms on this GPU
}

stage_throughput() {
  for kernel in pytorch auto; do
    python benchmarks/train_throughput.py --config configs/hstu/beauty.yaml --warmup 10 --steps 50 \
        --out "$OUT/hstu-beauty-$kernel.json" model.attention_kernel=$kernel
    python benchmarks/train_throughput.py --config configs/hstu/synthetic_long.yaml --warmup 5 --steps 20 \
        --out "$OUT/hstu-long-$kernel.json" model.attention_kernel=$kernel
  done
}

stage_serving() {
  python benchmarks/hstu_serving.py --device cuda --out "$OUT/hstu_serving.json"
  python benchmarks/mimn_uic.py latency --device cuda --out "$OUT/mimn_uic_latency_cuda.json"
  recsys train --config configs/dlrm/synthetic.yaml data.synthetic.num_users=300 data.synthetic.num_items=2000 \
      data.synthetic.mean_events_per_user=60 data.synthetic.heavy_user_fraction=0.0 data.num_workers=0 \
      train.epochs=1 output_dir=runs/serve-bench-dlrm
  python benchmarks/serve_load.py --checkpoint runs/serve-bench-dlrm --candidates 100 700 --p99-ms 60 \
      --rates 50 100 150 200 300 400 --step-seconds 10 --soak-seconds 60 --server-args "--device cuda --threads 8" \
      --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" --out "$OUT/serve-dlrm-mlperf-cuda.json"
}

stage_retrieval() {  # the six runs share the GPU under CUDA MPS where it starts (about 2x faster epochs)
  local mps=0
  if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then mps=1; fi
  python benchmarks/retrieval_runs.py --configs configs/hstu/sports.yaml configs/sasrec/sports.yaml \
      --seeds 42 43 44 --parallel 6 $RESUME --out "$OUT/sports/sports.json"
  if [ $mps = 1 ]; then echo quit | nvidia-cuda-mps-control; fi
}

stage_ablation() {
  python benchmarks/transact_ablation.py --seeds 0 1 2 3 4 --parallel 5 $RESUME \
      --out "$OUT/transact/ablation.json" train.epochs=2
}

stage_mimn() {
  python benchmarks/mimn_paper_eval.py --suite synthetic --seeds 0 1 2 --device cuda --parallel 4 $RESUME \
      --out "$OUT/mimn_paper_eval_synthetic/report.json"
}

[ $# -gt 0 ] || { sed -n '2,21p' "$0"; exit 2; }
for stage in "$@"; do
  fn="stage_${stage//-/_}"
  declare -F "$fn" > /dev/null || { echo "unknown stage '$stage'; stages: kernels kernel-bench plan throughput serving retrieval ablation mimn" >&2; exit 2; }
  echo "== $stage ($(date -u +%FT%TZ))"
  "$fn"
done
