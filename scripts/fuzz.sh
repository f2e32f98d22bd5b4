#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) into build-fuzz/ and runs each for SECONDS
# (default 60) on a working corpus seeded from fuzz/corpus/<target>/. Exits non-zero on a finding;
# the crashing input is left in build-fuzz/ (libFuzzer prints its path).
#
#   bash scripts/fuzz.sh [SECONDS]       (installs clang and its fuzzer runtime with apt-get if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
PACKAGES=(clang libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "fuzz: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
fi
# MOE_MPI=OFF: this build is also the check that moe_core builds without MPI (src/dist/no_mpi.cpp).
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DMOE_FUZZ=ON -DMOE_MPI=OFF > /dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_safetensors fuzz_config
for t in safetensors config; do
  mkdir -p "build-fuzz/corpus-$t"
  echo "fuzz: fuzz_$t for ${SECONDS_EACH}s"
  rc=0
  (cd build-fuzz && "bin/fuzz_$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -max_len=65536 \
      -print_final_stats=1 "corpus-$t" "../fuzz/corpus/$t" > "fuzz_$t.log" 2>&1) || rc=$?
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY|Test unit written" "build-fuzz/fuzz_$t.log" || true
  if [ "$rc" -ne 0 ]; then echo "fuzz: fuzz_$t found a failure (exit $rc); see build-fuzz/fuzz_$t.log"; exit 1; fi
done
echo "fuzz: no findings"
