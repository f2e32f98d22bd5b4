"""What the end-to-end CLI tests (lab_cli.py, lifelong_cli.py, dist/dist_cli.py) share: the `moe`
binary given as their first argument, running it, checking a refusal, and reading a checkpoint's
tensors."""
import json
import pathlib
import struct
import subprocess
import sys
from array import array

MOE = sys.argv[1]


def run(args, check=True, **kw):
    """`moe ARGS` with its output captured; a non-zero exit ends the test when check."""
    r = subprocess.run([MOE] + args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        sys.exit(f"FAIL: moe {' '.join(args)} exited {r.returncode}: {r.stderr.strip()}")
    return r


def one_line_error(args, expect):
    """`moe ARGS` is refused: exit 1 and a one-line error holding `expect`."""
    r = run(args, check=False)
    err = r.stderr.strip()
    assert r.returncode == 1, f"moe {' '.join(args)}: exit {r.returncode}, stderr {err}"
    assert err.count("\n") == 0 and expect in err, f"moe {' '.join(args)}: {err!r} lacks {expect!r}"


def tensors(path):
    """{name: (shape, array of floats)} of a safetensors file (F32 only, as moe.cpp writes)."""
    raw = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", t
        a = array("f")
        a.frombytes(raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]])
        out[name] = (t["shape"], a)
    return out
