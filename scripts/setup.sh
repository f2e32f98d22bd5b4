#!/usr/bin/env bash
# Installs every dependency of moe.cpp from Debian's packages (as root, or through sudo) and builds it
# into build/ (the CLI lands at build/bin/moe). Safe to run again: it skips what is already there.
# `scripts/setup.sh linux` also installs the kernel sources of the optional `linux` corpus (~140 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config            # C++20 compiler and build
  ccache                                      # compiler cache (rebuilds; the fresh-root check's build)
  libopenblas-dev libopenblas0-openmp         # BLAS: the OpenMP build is linked (see CMakeLists.txt)
  libdnnl-dev ocl-icd-opencl-dev              # oneDNN: bf16 matmuls; its CMake config asks for OpenCL
  libgtest-dev libgmock-dev libbenchmark-dev  # tests and micro-benchmarks
  libcli11-dev nlohmann-json3-dev             # command line, JSON
  libtomlplusplus-dev libsentencepiece-dev    # model configs, tokenizer
  libpcre2-dev libutf8proc-dev                # byte-level BPE of Hugging Face tokenizer.json: regex, NFC
  bible-kjv fortunes python3.11-doc           # training corpora (the C headers come with libc6-dev)
  libceres-dev                                # Ceres Solver: `moe fit`'s least squares
  libopenmpi-dev openmpi-bin                  # MPI: `mpirun -np P moe train` (expert parallelism)
  chromium                                    # headless browser: the report page's rendering test
  python3 python3-torch python3-numpy         # PyTorch reference and peer (tests and benchmarks only)
  python3-pil                                 # reading the report page's screenshot (tests only)
  python3-venv                                # the interop tests' venv: transformers from PyPI (tests only)
)

for extra in "$@"; do
  case "$extra" in
    linux) PACKAGES+=(linux-source-6.1) ;;
    *) echo "setup: unknown extra \"$extra\"; the one there is: linux (the linux corpus's kernel sources)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
echo "setup: built build/bin/moe"
