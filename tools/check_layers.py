#!/usr/bin/env python3
"""Check that the modules of a Rust crate use each other without cycles.

Usage: tools/check_layers.py [CRATE_SRC_DIR ...]   (default: quant/src)

Every file module is a node (`lib.rs` is `crate`, `a/b.rs` and `a/b/mod.rs`
are `crate::a::b`). An edge A -> B means A names something of B through a
`crate::`, `super::`, `self::` or child-module path, in a `use` or inline
(paths into other crates, `std::…`, are not edges).
Paths through `pub use` re-exports are followed to the module that defines
the item, so `crate::quantize_row` points at `rows`, not at `lib.rs`.
Declaring a child (`mod x;`) is not an edge, and `#[cfg(test)]` modules
(at the end of a file, by convention here) are ignored: a test may use
anything. Macros and their expansions are not seen.

Prints the modules in dependency order (each using only those before it)
and exits with status 1, listing each cycle, if there is one.
"""

import os
import re
import sys

PATH_RE = re.compile(r"(?<![\w:])[A-Za-z_]\w*(?:::[A-Za-z_]\w*)+")
USE_RE = re.compile(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);")
MOD_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
TEST_RE = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{")


def module_name(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return "::".join(["crate"] + parts)


def strip(text):
    m = TEST_RE.search(text)
    if m:
        text = text[: m.start()]
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def split_top(s):
    """Split `a, b::{c, d}` at the commas outside braces."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [x.strip() for x in out if x.strip()]


def expand(tree, prefix=()):
    """Yield (path segments, visible name) for every leaf of a use tree."""
    tree = " ".join(tree.split())
    if "{" in tree and tree.endswith("}"):
        head, body = tree.split("{", 1)
        head = tuple(s for s in head.strip().rstrip(":").split("::") if s.strip())
        for sub in split_top(body[:-1]):
            yield from expand(sub, prefix + tuple(s.strip() for s in head))
        return
    alias = None
    if " as " in tree:
        tree, alias = [x.strip() for x in tree.split(" as ")]
    segs = prefix + tuple(s.strip() for s in tree.split("::") if s.strip())
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    if segs:
        yield segs, alias or segs[-1]


class Crate:
    def __init__(self, src):
        self.src = src
        self.text = {}
        for root, _, files in os.walk(src):
            for f in files:
                if f.endswith(".rs"):
                    rel = os.path.relpath(os.path.join(root, f), src)
                    name = module_name(rel)
                    raw = open(os.path.join(root, f), encoding="utf-8").read()
                    # A module file that is not declared (an include!d table,
                    # a #[path] target) still shows up; harmless.
                    self.text[name] = strip(raw)
        self.modules = set(self.text)
        self.reexports = {}
        for m, t in self.text.items():
            for vis, tree in USE_RE.findall(t):
                if vis:
                    for segs, name in expand(tree):
                        self.reexports[(m, name)] = (m, segs)

    def start(self, m, first):
        if first == "crate":
            return "crate"
        if first == "self":
            return m
        if first == "super":
            return m.rsplit("::", 1)[0]
        child = m + "::" + first
        return child if child in self.modules else None

    def resolve(self, m, segs, depth=0):
        """The module where the item named by `segs` (seen from `m`) lives."""
        cur = self.start(m, segs[0])
        if cur is None or depth > 20:
            return None
        for seg in segs[1:]:
            if seg == "super":
                cur = cur.rsplit("::", 1)[0]
            elif cur + "::" + seg in self.modules:
                cur = cur + "::" + seg
            elif (cur, seg) in self.reexports:
                base, target = self.reexports[(cur, seg)]
                found = self.resolve(base, target, depth + 1)
                if found is None:
                    return cur
                cur = found
            else:
                break
        return cur

    def edges(self):
        g = {m: set() for m in self.modules}
        for m, t in self.text.items():
            paths = [p.split("::") for p in PATH_RE.findall(t)]
            for _, tree in USE_RE.findall(t):
                paths += [list(s) for s, _ in expand(tree)]
            for segs in paths:
                target = self.resolve(m, segs)
                if target and target != m and target in self.modules:
                    g[m].add(target)
        return g


def cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def order(g):
    """Modules so that each uses only modules listed before it."""
    done, out = set(), []
    while len(done) < len(g):
        ready = sorted(m for m in g if m not in done and g[m] <= done)
        if not ready:
            break
        out.append(ready)
        done.update(ready)
    return out


def main():
    dirs = sys.argv[1:] or ["quant/src"]
    bad = False
    for d in dirs:
        g = Crate(d).edges()
        print(f"{d}: {len(g)} modules")
        for i, layer in enumerate(order(g)):
            print(f"  layer {i}: {', '.join(layer)}")
        for c in cycles(g):
            bad = True
            print(f"  CYCLE: {' <-> '.join(c)}")
            for m in c:
                uses = sorted(x for x in g[m] if x in c)
                print(f"    {m} uses {', '.join(uses)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
