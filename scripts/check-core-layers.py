#!/usr/bin/env python3
"""Checks that the modules of engram-core depend on each other one way.

Reads every module under crates/engram-core/src (a file, or a folder with its
files), collects the other modules it names through `crate::` paths in code
(comments and `#[cfg(test)]` modules are skipped: doc links and tests are not
dependencies), and fails, naming the modules, when they form a cycle.

Why: a circle of modules that all reach each other (it once held commit,
config, engine, indexer, metrics, recall, session, snapshot and space) means
no part can be read, tested or changed alone. The layers, lowest first:
error, fault, fs, index, queue -> model -> record -> wal -> metrics -> space ->
recall, indexer -> commit, snapshot -> recovery, session -> config -> engine -> stream.

Usage: scripts/check-core-layers.py [src-dir]; prints the graph, exit 1 on a
cycle.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                    pathlib.Path(__file__).resolve().parent.parent / "crates/engram-core/src")


def code_of(text: str) -> str:
    """The text without test modules and comments."""
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests", text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".rs")


def main() -> int:
    files = sorted(ROOT.rglob("*.rs"))
    if not files:
        print(f"check-core-layers: no Rust files under {ROOT}", file=sys.stderr)
        return 2
    modules = {module_of(f) for f in files} - {"lib"}
    graph = {m: set() for m in modules}
    for f in files:
        m = module_of(f)
        if m == "lib":
            continue
        code = code_of(f.read_text())
        names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code))
        for group in re.findall(r"crate::\{([^}]*)\}", code):
            names |= {p.strip().split("::")[0] for p in group.split(",")}
        graph[m] |= {n for n in names if n in modules and n != m}

    # Strongly connected components (Tarjan).
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            comps.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = [c for c in comps if len(c) > 1]
    for m in sorted(graph):
        print(f"  {m} -> {', '.join(sorted(graph[m])) or '(nothing)'}")
    if cycles:
        for c in cycles:
            inner = {m: sorted(graph[m] & set(c)) for m in c}
            print(f"core layers: FAILED: these modules reach each other: {inner}")
        return 1
    print(f"core layers: {len(graph)} modules, dependencies run one way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
