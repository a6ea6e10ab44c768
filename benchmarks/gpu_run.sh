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
# Run from the repository root, in two calls of at most 10 minutes each (one machine start each):
#   bash benchmarks/gpu_run.sh 1    # VoxCPM1.5: streams per GPU with and without CUDA graphs, phases (~8 min)
#   bash benchmarks/gpu_run.sh 2    # VoxCPM2; two engines per GPU; kernels loaded eagerly (~8 min)
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
case "${1:-1}" in
1)  # first the CUDA-only paths' tests (graphs replay the eager step's bits; the one-call prefill), then
  # streams per GPU with the decode step replayed from CUDA graphs (the default), in two passes so that the
  # second shows each batch size warm; then one pass with eager steps, for the ratio within this session
  echo "=== tests/model/test_cuda.py ($(date +%T))"
  timeout 90 python3 -m pytest -q --noconftest -p no:cacheprovider tests/model/test_cuda.py 2>&1 | tail -30
  bench batching_gpu_voxcpm1.5 200 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 1,8,16,32,64,96 --max-batch-size 96 --repeat 2
  bench batching_gpu_voxcpm1.5_eager 110 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 1,8,16,32,64,96 --max-batch-size 96 --no-cuda-graphs
  # where an eager step's time goes, the whole step eager vs its graph (and whether the bits match), the
  # phases again stepping from graphs, and what still makes the host wait for the GPU inside a step
  bench step_phases_voxcpm1.5_cuda 170 step_phases.py --preset voxcpm1.5 --levels 1,16,64 --graph-probe \
    --sync-census
  ;;
2)
  bench batching_gpu_voxcpm2 220 batching.py --mode engine --preset voxcpm2 --engines batched \
    --levels 1,8,16,32,64,96 --max-batch-size 96 --repeat 2
  # replicas per GPU: the same streams split between two engine processes sharing the GPU (each its own host
  # thread launching kernels) against one engine with them all
  bench batching_gpu_voxcpm1.5_2_instances 150 batching.py --mode engine --preset voxcpm1.5 --engines batched \
    --levels 8,16,32,64,96 --max-batch-size 48 --instances 2
  # every CUDA kernel loaded at start instead of at its first use (CUDA's default is lazy): whether first
  # audio at a batch size's first use is paying for kernel loading
  (export CUDA_MODULE_LOADING=EAGER; bench batching_gpu_voxcpm1.5_eager_modules 110 batching.py --mode engine \
    --preset voxcpm1.5 --engines batched --levels 1,8,16,32,64,96 --max-batch-size 96)
  ;;
esac
