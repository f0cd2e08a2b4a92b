#!/usr/bin/env bash
# The device check, one call on a lent GPU machine (no network there). Prepare here first:
#   .whl/  wheels of the packages the device image lacks (webdataset, braceexpand, soundfile, cffi,
#          pycparser, soxr, pydantic, pydantic-core, annotated-types, typing-inspection,
#          typing-extensions; see the device notes for `pip download --python-version 3.12 ...`)
#   .gpu/  mamba_ssm/ and causal_conv1d_src/ from the mamba-ssm and causal-conv1d sdists
# then run it with `carry: [.whl, .gpu]`. Everything it measures lands in $OUT. The first fused Mamba call
# autotunes mamba-ssm's Triton kernels (over a minute on a fresh machine), hence the long timeouts: the
# whole check needs about 12 minutes of device time, more than one 10-minute call; split it if needed.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" /tmp/site
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site . || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/gpu.txt"
# The kernel build (CPU-bound) and the default training run (GPU-bound) overlap.
MAX_JOBS=14 timeout 300 python3 benchmarks/gpu_mamba_bootstrap.py .gpu /tmp/site > "$OUT/bootstrap.log" 2>&1 &
build=$!
timeout 200 python3 -m mbp.cli run --out /tmp/run --overwrite --json > "$OUT/run.json" 2> "$OUT/run.err"
echo "mbp run rc=$?" >> "$OUT/gpu.txt"
wait $build
echo "bootstrap rc=$?" >> "$OUT/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_mamba.py tests/test_generate.py \
    > "$OUT/pytest.log" 2>&1
echo "pytest rc=$?" >> "$OUT/gpu.txt"
timeout 300 python3 benchmarks/gpu_mamba_check.py > "$OUT/mamba.json" 2> "$OUT/mamba.err"
echo "mamba check rc=$?" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"; tail -3 "$OUT/pytest.log"; cat "$OUT/mamba.json"
