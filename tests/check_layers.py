#!/usr/bin/env python3
"""Check the module layering of both crates (ARCHITECTURE.md).

Every `crate::` and `super::` path in a source file is an edge from the
file's module to the module it names, at the depth of `DEPTH` path segments
(`format::gguf`, `model::naming`, …). The check fails when

  * the module graph of a crate has a cycle (any two modules that import
    each other, directly or through others), or
  * a top-level module of the qresidual crate uses one that comes after it
    in `LAYERS` (format must not use model, model must not use engine, …).

Run: python3 tests/check_layers.py   (exit 1 and the offending edges on failure)
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPTH = 2  # cycles are sought at depth 1 (format, model, …) and at this depth
# The qresidual crate's layers, each using only those before it.
LAYERS = ["error", "format", "model", "engine", "report", "apply", "ops", "cli"]
# Modules outside the layering: the binary's entry and the fuzz harness may use anything.
FREE = {"lib", "main", "fuzz_entry"}

COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
PATH_START = re.compile(r"\b(crate|super)::")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def module_of(src: pathlib.Path, path: pathlib.Path):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def parse_group(text: str, i: int):
    """Paths inside a `{…}` use group starting at text[i] == '{'; returns (paths, end)."""
    paths, depth, cur, j = [], 0, "", i
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
            if depth > 1:
                cur += c
        elif c == "}":
            depth -= 1
            if depth == 0:
                if cur.strip():
                    paths.append(cur.strip())
                return paths, j
            cur += c
        elif c == "," and depth == 1:
            paths.append(cur.strip())
            cur = ""
        else:
            cur += c
        j += 1
    return paths, j


def segments(path: str):
    out = []
    for seg in path.split("::"):
        m = IDENT.match(seg.strip())
        if not m or seg.strip().startswith("{"):
            break
        out.append(m.group(0))
    return out


def edges_of(text: str, here):
    """Module paths (lists of segments) this file refers to."""
    text = COMMENT.sub("", text)
    found = []
    for m in PATH_START.finditer(text):
        base = [] if m.group(1) == "crate" else here[:-1]
        rest = text[m.end():]
        # super::super::…
        while m.group(1) == "super" and rest.startswith("super::"):
            base = base[:-1]
            rest = rest[len("super::"):]
        if rest.startswith("{"):
            group, _ = parse_group(rest, 0)
            for p in group:
                found.append(base + segments(p))
        else:
            seg = []
            for s in re.match(r"[A-Za-z0-9_:]*", rest).group(0).split("::"):
                if not s:
                    break
                seg.append(s)
            if rest[len("::".join(seg)):].startswith("::{"):
                group, _ = parse_group(rest, len("::".join(seg)) + 2)
                for p in group:
                    found.append(base + seg + segments(p))
            found.append(base + seg)
    return found


def check_crate(src: pathlib.Path, layered: bool, depth: int = DEPTH):
    files = sorted(src.rglob("*.rs"))
    modules = {tuple(module_of(src, f)) for f in files}
    graph, problems = {}, []

    def known(path):
        # The longest prefix of `path` (up to DEPTH) that is a module.
        for d in range(min(depth, len(path)), 0, -1):
            if tuple(path[:d]) in {m[:d] for m in modules}:
                return tuple(path[:d])
        return None

    for f in files:
        here = module_of(src, f)
        node = tuple(here[:depth])
        for target in edges_of(f.read_text(), here):
            t = known(target)
            if t is None or t == node or t[0] == node[0] and len(t) < len(node):
                continue
            if t[:1] == node[:1] and len(t) == 1:
                continue
            graph.setdefault(node, set()).add(t)
            if layered and node[0] not in FREE and t[0] not in FREE and t[0] in LAYERS:
                if node[0] in LAYERS and LAYERS.index(t[0]) > LAYERS.index(node[0]):
                    problems.append(f"{f.relative_to(ROOT)}: layer {node[0]} uses later layer {t[0]} ({'::'.join(target)})")
    # Cycles: Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    for comp in sccs:
        names = sorted("::".join(c) for c in comp)
        problems.append(f"{src.relative_to(ROOT)}: import cycle among {', '.join(names)}")
    return problems, graph


def main():
    problems = []
    for src, layered in ((ROOT / "src", True), (ROOT / "quant" / "src", False)):
        p, _ = check_crate(src, False, depth=1)
        problems += p
        p, graph = check_crate(src, layered)
        problems += p
        if "-v" in sys.argv:
            for v in sorted(graph):
                print("::".join(v), "->", ", ".join(sorted("::".join(w) for w in graph[v])))
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print("layers: no import cycle in src/ or quant/src/, every layer uses only earlier ones")


if __name__ == "__main__":
    main()
