#!/usr/bin/env bash
# The fresh-root check: proves the README's commands work on a machine that has only what a minimal
# Debian 12 image has, not on a developer's machine with its leftovers. It builds a minimal Debian 12
# root (mmdebstrap, variant minbase), copies the repository's files into it (tracked and untracked,
# not the ignored ones: no build/, no data/), and runs there, as root in a chroot:
#   tests (default)   the README's test command, read from the README itself
#   full              the README's main job, then its test command
# Needs root and Debian's package mirror (apt-get inside the root). Exits with the command's status.
#
#   sudo bash scripts/fresh_root_check.sh [tests|full] [ROOT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-tests}
ROOT=${2:-/tmp/moe-fresh-root}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
[ "$(id -u)" -eq 0 ] || { echo "fresh_root_check: needs root (a chroot); run it with sudo" >&2; exit 1; }
case "$MODE" in tests|full) ;; *) echo "fresh_root_check: mode is tests or full, not '$MODE'" >&2; exit 2 ;; esac

# The two commands exactly as the README writes them (the indented lines after **Main job.** and **Tests.**).
readme_command() { awk -v key="$1" '$0 ~ key {f=1; next} f && /^    [^ ]/ {sub(/^    /, ""); print; exit}' README.md; }
MAIN=$(readme_command '^\*\*Main job\.\*\*')
TESTS=$(readme_command '^\*\*Tests\.\*\*')
[ -n "$MAIN" ] && [ -n "$TESTS" ] || { echo "fresh_root_check: cannot find the two commands in README.md" >&2; exit 1; }

if ! command -v mmdebstrap > /dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap > /dev/null
fi

cleanup() {
  mountpoint -q "$ROOT/proc" && umount "$ROOT/proc"
  mountpoint -q "$ROOT/sys" && umount "$ROOT/sys"
  # --one-file-system: never into anything still mounted inside the root.
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT
cleanup

t0=$(date +%s)
echo "fresh_root_check: a minimal Debian 12 root in $ROOT"
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$ROOT" "$MIRROR"
mkdir -p "$ROOT/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && cp --parents -a "$f" "$ROOT/src/"
done
mount -t proc proc "$ROOT/proc"
mount -t sysfs -o ro sysfs "$ROOT/sys"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The network trust of this workplace's machines (not the project's leftovers): the extra CA
# certificates its egress proxy signs with, installed on every machine, so that pip (the interop
# tests' transformers) reaches PyPI from the root as it does from the machine.
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  chroot "$ROOT" /usr/sbin/update-ca-certificates > /dev/null
fi

# This machine's ccache (the host build's compiled objects), copied in: the root's build, made with
# the root's own compiler and headers, takes from it each object whose compiler, flags, source and
# every header it includes hash the same (a header the root lacks still fails the build), and
# compiles the rest.
CCACHE_DIR_HOST=$(command -v ccache > /dev/null && ccache -k cache_dir || true)
if [ -n "$CCACHE_DIR_HOST" ] && [ -d "$CCACHE_DIR_HOST" ]; then
  mkdir -p "$ROOT/root/.cache"
  cp -a "$CCACHE_DIR_HOST" "$ROOT/root/.cache/ccache"
fi

# This machine's pip wheel cache too: the llama-cpp-python wheel that scripts/interop_venv.sh built here
# from its source package (~4 minutes of compiling llama.cpp on 2 cores). Only the interop tests' venv
# reads it, a test oracle that `moe` never needs; without it the root builds the wheel itself.
PIP_WHEELS_HOST=${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}/wheels
if [ -d "$PIP_WHEELS_HOST" ]; then
  mkdir -p "$ROOT/root/.cache/pip"
  cp -a "$PIP_WHEELS_HOST" "$ROOT/root/.cache/pip/wheels"
fi

run() {
  echo "fresh_root_check: running: $1"
  chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 /bin/bash -c "cd /src && $1"
}
[ "$MODE" = full ] && run "$MAIN"
run "$TESTS"
echo "fresh_root_check: passed ($MODE) in $(( $(date +%s) - t0 )) s"
