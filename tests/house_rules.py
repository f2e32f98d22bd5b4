#!/usr/bin/env python3
"""The house rules of docs/ARCHITECTURE.md, checked on the source tree (run by ctest as HouseRules):

1. Layering: a file of src/<room>/ includes only its own room and the rooms below it (ROOMS).
2. Kinds stay in their rooms: outside src/model/, only the MoE room (src/moe/) names the MoE layer,
   only the PEER room (src/peer/) the PEER layer, and only the routers' room (src/moe/routers/) a
   concrete router kind. The rest of the code goes through the Ffn interface (nn/ffn.h) and the
   routers' traits. The one exception is the layer benchmarks of the CLI (EXCEPTIONS), which build the
   layer they measure.

    house_rules.py [ROOT]            check; exit 1 and list every breach
    house_rules.py --count [ROOT]    the places that name a concrete FFN or router kind outside the
                                     model and the kind's own room, per file (works on older trees)
"""
import pathlib
import re
import sys

# Each room and the rooms it may include (itself included). apps/ may include every room.
ROOMS = {
    "core": {"core"},
    "dist": {"core", "dist"},
    "nn": {"core", "nn"},
    "data": {"core", "data"},
    "moe": {"core", "nn", "moe"},
    "peer": {"core", "nn", "peer"},
    "model": {"core", "nn", "moe", "peer", "model"},
    "eval": {"core", "nn", "data", "model", "eval"},
    "infer": {"core", "nn", "model", "infer"},
    "train": {"core", "nn", "data", "model", "eval", "train"},
    "lab": {"core", "nn", "data", "model", "eval", "infer", "train", "lab"},
    "lifelong": {"core", "nn", "data", "model", "eval", "infer", "train", "lifelong"},
    "interop": {"core", "nn", "data", "model", "eval", "infer", "train", "interop"},
}

# Each kind's names: in code (type names, members, enumerators; looked for with string contents left out)
# and as a whole string literal ("peer", "reinforce": a comparison with the name).
FFN_MOE = (r"\b(MoeLayer|ExpertBank|RoutingStats|MoeConfig|MoeForwardOptions)\b|(\.|->)moe\b|\bis_moe_block\b|FfnKind::moe\b",
           r'"moe"')
FFN_PEER = (r"\b(PeerLayer|PeerStats|PeerConfig)\b|(\.|->)peer\b|\bis_peer_block\b|FfnKind::peer\b", r'"peer"')
FFN_DENSE = (r"\bDenseFfn\b|(\.|->)dense\b|FfnKind::dense\b", r'"dense"')
ROUTER = (r"\bRouterKind::\w+|\brouter_kind\(\)|\b(TopkSoftmax|SoftmaxTopk|NoisyTopk|SigmoidBias|Hash|Base|SBase|Reinforce|"
          r"ExpertChoice)Router\b",
          r'"(topk_softmax|softmax_topk|noisy_topk|sigmoid_bias|hash|base|sbase|reinforce|expert_choice)"')

# (pattern, where it may appear: path prefixes)
KINDS = [
    ("MoE layer", FFN_MOE, ("src/model/", "src/moe/")),
    ("PEER layer", FFN_PEER, ("src/model/", "src/peer/", "src/moe/peer")),
    ("dense FFN", FFN_DENSE, ("src/model/",)),
    ("router kind", ROUTER, ("src/moe/routers/", "src/moe/router")),
]
# The layer benchmarks build the layer they measure (`moe bench moe-layer`, `moe bench peer`).
EXCEPTIONS = {"apps/moe/cmd_bench.cpp", "apps/moe/bench_cmd.cpp"}


def code_only(text):
    """The text without comments (strings kept: a kind's name in a string names it)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.split("\n"))


def blank_strings(line):
    """The line with the contents of its string literals left out ("model.peer.n_keys" in a help text
    names a config key, not the layer)."""
    return re.sub(r'"(\\.|[^"\\])*"', '""', line)


def sources(root):
    for top in ("src", "apps"):
        for p in sorted((root / top).rglob("*")):
            if p.suffix in (".h", ".cpp"):
                yield p.relative_to(root).as_posix(), p.read_text(errors="replace")


def kind_places(root):
    """{file: [(kind, line number, line)]} of the places that name a kind outside its rooms."""
    out = {}
    for rel, text in sources(root):
        for n, line in enumerate(code_only(text).split("\n"), 1):
            for kind, (in_code, literal), allowed in KINDS:
                if rel.startswith(allowed) or not (re.search(in_code, blank_strings(line)) or re.search(literal, line)):
                    continue
                # In an old tree the PEER layer lived in src/moe/: the MoE room's names there are its own.
                if kind == "MoE layer" and rel.startswith("src/moe/peer"):
                    continue
                out.setdefault(rel, []).append((kind, n, line.strip()))
                break
    return out


def layering_breaches(root):
    breaches = []
    for rel, text in sources(root):
        parts = rel.split("/")
        if parts[0] != "src":
            continue
        room = parts[1]
        for n, line in enumerate(text.split("\n"), 1):
            m = re.match(r'\s*#include "([a-z_]+)/', line)
            if m and m.group(1) not in ROOMS.get(room, set()):
                breaches.append(f"{rel}:{n}: the {room} room includes {m.group(1)}/ ({line.strip()})")
    return breaches


def main(argv):
    count = "--count" in argv
    args = [a for a in argv if a != "--count"]
    root = pathlib.Path(args[0] if args else pathlib.Path(__file__).resolve().parent.parent)
    places = kind_places(root)
    if count:
        total = sum(len(v) for v in places.values())
        for rel, v in sorted(places.items()):
            print(f"{len(v):4d}  {rel}" + ("  (layer benchmarks)" if rel in EXCEPTIONS else ""))
        print(f"{total:4d}  in all, {sum(len(v) for r, v in places.items() if r not in EXCEPTIONS)} outside the layer benchmarks")
        return 0
    breaches = layering_breaches(root)
    for rel, v in sorted(places.items()):
        if rel in EXCEPTIONS:
            continue
        breaches += [f"{rel}:{n}: names a concrete {kind} outside its room ({line})" for kind, n, line in v]
    for b in breaches:
        print(b)
    print(f"house rules: {len(breaches)} breach(es)" if breaches else "house rules: layering and kind rooms hold")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
