#!/usr/bin/env bash
# The Python environment of the interop tests (tests/interop/*_parity.py): a venv over Debian's
# python3 that sees its torch and numpy (--system-site-packages) and adds, from PyPI, transformers
# pinned to the newest release that runs on Debian 12's torch 1.13 (4.50 needs torch.distributed.tensor,
# a torch 2 module), with its tokenizers and safetensors; gguf (llama.cpp's reader); and llama-cpp-python
# built from its source package (llama.cpp compiled here with cmake, ~4 minutes on 2 cores; pip keeps
# the built wheel in its cache, so a second venv on the same machine reuses it). Test oracles and
# peers only: `moe` never needs them. Kept between runs: rebuilt only when the pins below change.
#
#   scripts/interop_venv.sh VENV_DIR     (prints nothing on success when already current)
set -euo pipefail
VENV=${1:?usage: interop_venv.sh VENV_DIR}
PINS="transformers==4.49.0 tokenizers==0.21.4 safetensors==0.8.0 huggingface_hub==0.36.2 gguf==0.19.0 llama-cpp-python==0.3.36"
if [ -f "$VENV/pins" ] && [ "$(cat "$VENV/pins")" = "$PINS" ]; then exit 0; fi
rm -rf "$VENV"
# pip trusts the system's certificates (those of the machine's network included), not only its own bundle.
export PIP_CERT=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
/usr/bin/python3 -m venv --system-site-packages "$VENV"
# llama.cpp's build uses every core.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# shellcheck disable=SC2086
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-binary llama-cpp-python --use-feature=no-binary-enable-wheel-cache $PINS
echo "$PINS" > "$VENV/pins"
echo "interop_venv: $VENV has $PINS"
