#!/bin/bash
# The GPU benchmarks, for a machine with CUDA torch but without voxcpm (as a lent H200 is):
# install the wheels carried in .whl/, give torchaudio FFmpeg, then each benchmark bounded in time, its
# json + md copied to $OUT (default: benchmarks/results) as soon as it is written.
#
# The wheels, downloaded here for the GPU machine's Python (3.12), about 50 MB:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     voxcpm==2.0.3 av==18.1.0 librosa==0.11.0 soxr==1.1.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 limits==5.8.0 \
#     Deprecated==1.3.1 audioread==3.1.0 pooch==1.9.0 decorator==5.3.1 platformdirs==4.14.8 torchcodec==0.17.0 \
#     pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pygments==2.21.0
# Run from the repository root: `first` in at most 8 minutes, `more` in at most 10, most important first, each part saving its
# results as it ends (a lent GPU's budget is 15 minutes, the machine's start included):
#   bash benchmarks/gpu_run.sh        # the CUDA graphs guard, the CUDA paths' tests, VoxCPM2 under load as the peers measure it, ...
#   bash benchmarks/gpu_run.sh more   # what did not fit: LoRA adapters, a VAE call per patch, VoxCPM1.5 bursts, two engines per GPU
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  # voxcpm reads prompt audio (the warm-up's too) with torchaudio, which needs FFmpeg's shared libraries:
  # PyAV's wheel bundles FFmpeg 8 under hashed names, so link them under their sonames
  (cd /tmp/site/av.libs && for f in libav*-*.so.* libsw*-*.so.*; do
    base=${f%%-*}; version=${f#*.so.}; ln -sf "$f" "$base.so.${version%%.*}"
  done)
  export LD_LIBRARY_PATH=/tmp/site/av.libs
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, voxcpm, torchcodec._core, serve_app.model.batched.batch_engine; print(torch.__version__)" || exit 1

bench() {  # name seconds script args...
  local name=$1 limit=$2 script=$3
  shift 3
  echo "=== $name ($(date +%T))"
  timeout "$limit" python3 "benchmarks/$script" --device cuda --dtype bfloat16 --name "$name" "$@" 2>&1 |
    grep -v -E "FutureWarning|WeightNorm.apply|^Running on device"
  echo "=== $name exit ${PIPESTATUS[0]} ($(date +%T))"
  [ "$OUT" = benchmarks/results ] || cp "benchmarks/results/$name.json" "benchmarks/results/$name.md" "$OUT"/
}
case "${1:-first}" in
first)
  # 0. whether the CUDA graphs guard (serve_app/model/batched/graph_check.py) lets them on: "on" on both tiny
  # models is what turning them on by default waits for; otherwise "off: <reason>", and the warning says why
  echo "=== CUDA graphs guard ($(date +%T))"
  timeout 120 python3 - <<'PY' 2>&1 | grep -v -E "FutureWarning|WeightNorm.apply|^Running on device"
import tempfile
from pathlib import Path
from serve_app.config import ModelConfig
from serve_app.model import synthetic
from serve_app.model.batched.batch_engine import BatchedEngine
for preset in ("tiny-voxcpm1.5", "tiny-voxcpm2"):
    checkpoint = synthetic.build(preset, Path(tempfile.mkdtemp()) / preset, dtype="bfloat16")
    config = ModelConfig(source=str(checkpoint), device="cuda", engine="batched", max_batch_size=8,
                         kv_cache_length=2048, warmup=False, cuda_graphs=True)
    engine = BatchedEngine.load(config)
    print(f"graphs of {preset}: {engine.info.graphs}", flush=True)
    engine.close()
PY
  # 1. the CUDA-only paths' tests: graphs replay the eager step's bits, padding rows, the one-call prefill
  echo "=== tests/model/test_cuda.py ($(date +%T))"
  timeout 90 python3 -m pytest -q --noconftest -p no:cacheprovider tests/model/test_cuda.py 2>&1 | tail -30
  # 2. VoxCPM2 in closed loop at nano-vllm-voxcpm's concurrencies (its author's RTX 4090 table), CUDA graphs on
  bench serving_load_gpu_voxcpm2 180 serving_load.py --mode engine --preset voxcpm2 --no-open-loop \
    --concurrency 1,8,16,32,64 --seconds 10 --max-batch-size 64 --idle-requests 5
  # 3. the same with newcomers first (first_step_alone: true; by default off where steps replay CUDA graphs)
  bench serving_load_gpu_voxcpm2_first_step_alone 120 serving_load.py --mode engine --preset voxcpm2 \
    --no-open-loop --concurrency 1,8,16,32,64 --seconds 10 --max-batch-size 64 --first-step-alone --idle-requests 0
  # 4. where a step's time goes, the whole step eager vs its graph (and whether the bits match)
  bench step_phases_voxcpm2_cuda 100 step_phases.py --preset voxcpm2 --levels 1,16,64 --graph-probe
  ;;
more)
  # LoRA adapters: 8 and 32 streams each with its own adapter against the base model (steps with adapters eager)
  bench adapters_gpu_voxcpm2 150 adapters.py --preset voxcpm2 --streams 8 32 --repeat 2
  # a VAE call per patch (decode_patches 1, the captured graph at every step) against the default grouping
  bench serving_load_gpu_voxcpm2_decode_patches_1 120 serving_load.py --mode engine --preset voxcpm2 \
    --no-open-loop --concurrency 1,8,16,32,64 --seconds 10 --max-batch-size 64 --decode-patches 1 --idle-requests 0
  bench batching_gpu_voxcpm1.5 200 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 1,8,16,32,64,96 --max-batch-size 96 --repeat 2
  bench batching_gpu_voxcpm1.5_eager 110 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 1,8,16,32,64,96 --max-batch-size 96 --no-cuda-graphs
  # replicas per GPU: the same streams split between two engine processes sharing the GPU (each its own host
  # thread launching kernels) against one engine with them all
  bench batching_gpu_voxcpm1.5_2_instances 150 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 8,16,32,64,96 --max-batch-size 48 --instances 2
  ;;
esac
