#!/usr/bin/env bash
# Builds hooklens's CUDA test binary and GPU benchmark on a machine WITHOUT a GPU or CUDA
# toolkit, for running on a GPU machine that has the NVIDIA driver and the CUDA 13 runtime
# libraries (libcublas, libcublasLt, libcurand, libcudart; e.g. those of a PyTorch cu13 install)
# but no Rust toolchain:
#
#   bash scripts/build_cuda_offline.sh OUTDIR     # here: nvcc 13.0 and CUDA 13 libraries from PyPI
#   # there, with OUTDIR and the repository copied over (the test reads tests/fixtures by the
#   # path it was built at):
#   LD_LIBRARY_PATH=<dir of libcublas.so.13>:$LD_LIBRARY_PATH OUTDIR/cuda-test --test-threads=1 --nocapture
#   python3 benches/hf_cuda_bench.py /tmp/gpt2 hf.json && OUTDIR/bench_cuda --model /tmp/gpt2 --reference hf.json
#
# nvcc 13.0 matches driver 580 (CUDA 13.0): PTX from a newer nvcc is refused by an older driver.
# candle links libcuda.so, which only a driver install has: a stub exporting cudarc's driver
# symbols (with the driver's soname libcuda.so.1) stands in at link time. Compute capability 90
# (Hopper); set CUDA_COMPUTE_CAP for another GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?usage: build_cuda_offline.sh OUTDIR}")
venv=${HOOKLENS_CUDA_VENV:-$HOME/.cache/hooklens/cuda-venv}
if [ ! -x "$venv/bin/nvcc-ready" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
  touch "$venv/bin/nvcc-ready"
fi
cu=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
link="$venv/link"
mkdir -p "$link"
# The driver stub: every cu* function cudarc declares, doing nothing (never run).
cudarc=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | head -1)
if [ -z "$cudarc" ]; then cargo fetch -q; cudarc=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* | head -1); fi
grep -o "pub unsafe fn cu[A-Za-z0-9_]*" "$cudarc/src/driver/sys/mod.rs" | awk '{print "void " $4 "(void){}"}' \
  | sort -u > "$link/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so" "$link/stub.c"
for n in cublas cublasLt nvrtc cudart; do ln -sf "$cu/lib/lib$n.so.13" "$link/lib$n.so"; done
ln -sf "$cu/lib/libcurand.so.10" "$link/libcurand.so"
export PATH=$cu/bin:$PATH CUDA_ROOT=$cu CUDA_PATH=$cu CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=target/cuda RUSTFLAGS="-L native=$link" CARGO_PROFILE_DEV_DEBUG=0
cargo build --features cuda --test cuda --example bench_cuda --message-format=json-render-diagnostics \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("cuda", "bench_cuda"):
        print(m["target"]["name"], m["executable"])
' > "$out.list"
mkdir -p "$out"
while read -r name exe; do
  dest=$out/$([ "$name" = cuda ] && echo cuda-test || echo bench_cuda)
  cp "$exe" "$dest" && strip "$dest"
done < "$out.list"
rm "$out.list"
ls -la "$out"
