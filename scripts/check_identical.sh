#!/usr/bin/env bash
# Same training before and after a change: builds the CLI of git revision REV in a worktree, trains
# every preset (configs/*.toml, configs/routers/*.toml, configs/peer/*.toml) STEPS steps with that
# build and with this one (same seed, same threads), and compares every tensor of the weights and of
# the optimizer state, and every metrics line (timing fields left out), exactly. For refactors that
# must not change behaviour. Prints one line per preset; exits non-zero on any difference.
#
#   bash scripts/check_identical.sh REV [STEPS [CONFIG...]]   (STEPS 50, every preset; after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: check_identical.sh REV [STEPS]}
STEPS=${2:-50}
shift $(( $# < 2 ? $# : 2 ))
CONFIGS=("$@")
((${#CONFIGS[@]})) || CONFIGS=(configs/*.toml configs/routers/*.toml configs/peer/*.toml)
WORK=${WORK:-/tmp/moe-identical}
NEW=${MOE:-build/bin/moe}
[ -x "$NEW" ] || { echo "check_identical: $NEW not found; run scripts/setup.sh first" >&2; exit 1; }

rm -rf "$WORK" && mkdir -p "$WORK"
git worktree remove --force "$WORK/src" 2> /dev/null || true
git worktree add --detach "$WORK/src" "$REV" > /dev/null
trap 'git worktree remove --force "$WORK/src" 2> /dev/null || true' EXIT
echo "check_identical: building $REV ($(git rev-parse --short "$REV"))"
cmake -S "$WORK/src" -B "$WORK/src/build" -DCMAKE_BUILD_TYPE=Release -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_BENCH=OFF > /dev/null
cmake --build "$WORK/src/build" -j"$(nproc)" --target moe > "$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log"; exit 1; }
OLD="$WORK/src/build/bin/moe"

# The weights (or optimizer state) file of a run: the newest step-N folder's, or the run folder's own
# (the layout before checkpoints had folders).
ckpt_file() { local d; d=$(ls -d "$1"/step-[0-9]* 2> /dev/null | grep -v '\.' | sort | tail -n 1); echo "${d:-$1}/$2"; }

compare() {  # compare RUN_A RUN_B: tensors of both files and the metrics lines
  /usr/bin/python3 - "$(ckpt_file "$1" model.safetensors)" "$(ckpt_file "$2" model.safetensors)" \
      "$(ckpt_file "$1" optimizer.safetensors)" "$(ckpt_file "$2" optimizer.safetensors)" \
      "$1/metrics.jsonl" "$2/metrics.jsonl" <<'EOF'
import json, mmap, struct, sys
def tensors(path):  # name -> (memory map, byte range): PEER's files are gigabytes, never read whole
    f = open(path, "rb")
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: (data, 8 + n + v["data_offsets"][0], 8 + n + v["data_offsets"][1]) for k, v in header.items()}
def same(x, y, chunk=1 << 26):
    (dx, bx, ex), (dy, by, ey) = x, y
    if ex - bx != ey - by:
        return False
    return all(dx[bx + o:min(ex, bx + o + chunk)] == dy[by + o:min(ey, by + o + chunk)] for o in range(0, ex - bx, chunk))
bad = []
for a, b in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        bad.append(f"{a}: tensor names differ")
    bad += [f"{a}: {k} differs" for k in ta if k in tb and not same(ta[k], tb[k])]
timing = ("tokens_per_s", "mfu", "step_s")
def lines(path):
    return [{k: v for k, v in json.loads(l).items() if k not in timing} for l in open(path)]
la, lb = lines(sys.argv[5]), lines(sys.argv[6])
if la != lb:
    bad.append(f"metrics differ from step {next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))}")
print("; ".join(bad[:3]) if bad else "identical")
sys.exit(1 if bad else 0)
EOF
}

failed=0
for cfg in "${CONFIGS[@]}"; do
  name=$(echo "${cfg#configs/}" | sed 's|/|-|g; s|\.toml$||')
  args=(--config "$cfg" --threads 2 --set train.steps="$STEPS" --set train.eval_every=0 --set train.eval_windows=4
        --set train.data_dir="$WORK/data")
  "$NEW" train "${args[@]}" --set train.out="$WORK/new/$name" > "$WORK/new-$name.log" 2>&1
  "$OLD" train "${args[@]}" --set train.out="$WORK/old/$name" > "$WORK/old-$name.log" 2>&1
  if result=$(compare "$WORK/old/$name" "$WORK/new/$name"); then
    echo "$name: $result ($STEPS steps)"
  else
    echo "$name: DIFFERENT: $result"; failed=1
  fi
  rm -rf "$WORK/old/$name" "$WORK/new/$name"  # PEER's checkpoints are gigabytes
done
[ "$failed" -eq 0 ] && echo "check_identical: every preset trains identically with $REV and this build"
exit "$failed"
