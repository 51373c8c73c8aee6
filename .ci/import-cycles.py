#!/usr/bin/env python3
"""Fails when the files of one crate import each other in a circle.

Each `src/` file is a module; an edge a -> b means a names something of b by a
`crate::`, `super::` or `self::` path (in a `use` or inline). Test modules at the end
of a file (`#[cfg(test)]`) are left out: tests may reach anywhere. Prints every cycle
(a strongly connected component of more than one file) and exits 1 if there is one.

Usage: import-cycles.py [crate-dir ...]   (default: every crate of the workspace)
"""

import pathlib
import re
import sys

USE = re.compile(r"\buse\s+([^;]*);", re.S)
INLINE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
BARE = re.compile(r"(?<![:\w])([a-z_][a-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
TESTS = re.compile(
    r"^\s*#\[cfg\(test\)\]\s*\n(?:\s*#\[[^\n]*\]\s*\n)*\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{", re.M
)


BIN = "<main>"
MOD_DECL = re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", re.M)


def module_of(src, path):
    """The module path of a file: src/a/b.rs and src/a/b/mod.rs are ("a", "b"); the
    library root is (), the binary root (main.rs) its own node."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts == ["lib"]:
        return ()
    if parts == ["main"]:
        return (BIN,)
    return tuple(parts)


def bin_modules(src):
    """The top-level modules main.rs declares: their `crate::` is the binary's root."""
    main = src / "main.rs"
    if not main.exists():
        return set()
    return set(MOD_DECL.findall(main.read_text()))


def expand(tree):
    """The paths of one `use` tree: `a::{b, c::{d, e}}` gives a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    depth = 0
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                prefix, inner = tree[:i], tree[i + 1 : tree.rindex("}")]
                parts, level, start = [], 0, 0
                for j, c in enumerate(inner):
                    level += c == "{"
                    level -= c == "}"
                    if c == "," and level == 0:
                        parts.append(inner[start:j])
                        start = j + 1
                parts.append(inner[start:])
                return [p for part in parts if part for p in expand(prefix + part)]
            depth += 1
    return [re.sub(r"\bas\b.*$", "", tree).removesuffix("::self")]


def resolve(path, here, modules, in_bin, reexports=None, depth=0):
    """The module a path lands in: the longest module prefix of the absolute path. A
    bare path counts when it starts with a child module of `here`. A name a module only
    re-exports (`pub use`) resolves to where it comes from."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs.pop(0) == "super" and base:
                base.pop()
    elif here != (BIN,) and tuple(here) + (segs[0],) in modules:
        base = list(here)
    elif here == (BIN,) and (segs[0],) in modules:
        base = []
    else:
        return None
    full = base + segs
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in modules:
            target = tuple(full[:n])
            # `crate::X` from the binary's modules is main.rs, not lib.rs.
            if target == () and in_bin:
                return (BIN,)
            rest = full[n:]
            alias = (reexports or {}).get((target, rest[0])) if rest else None
            if alias is not None and depth < 8:
                origin = resolve(alias, target, modules, in_bin, reexports, depth + 1)
                if origin is not None:
                    return origin
            return target
    return None


REEXPORT = re.compile(r"\bpub(?:\([a-z]+\))?\s+use\s+([^;]*);", re.S)


def reexports_of(files):
    """(module, name) -> the path it re-exports, for every `pub use` of every file."""
    out = {}
    for mod, path in files.items():
        for tree in REEXPORT.findall(strip(path.read_text())):
            for p in expand(tree):
                name = p.split("::")[-1]
                if name not in ("*", "self"):
                    out[(mod, name)] = p
    return out


def strip(text):
    """The text of a file without its test module and comments."""
    cut = TESTS.search(text)
    if cut:
        text = text[: cut.start()]
    return re.sub(r"//[^\n]*", "", text)


def edges_of(src):
    files = {module_of(src, p): p for p in sorted(src.rglob("*.rs"))}
    files = {m: p for m, p in files.items() if "bin" not in m[:1]}
    graph = {m: set() for m in files}
    of_bin = bin_modules(src)
    reexports = reexports_of(files)
    for mod, path in files.items():
        in_bin = mod == (BIN,) or (len(mod) > 0 and mod[0] in of_bin)
        # A re-export is an alias, not a use: it adds no edge of its own.
        text = REEXPORT.sub("", strip(path.read_text()))
        paths = [p for tree in USE.findall(text) for p in expand(tree)]
        paths += INLINE.findall(text)
        paths += BARE.findall(text)
        for p in paths:
            target = resolve(p, mod, files, in_bin, reexports)
            if target is not None and target != mod:
                graph[mod].add(target)
    return graph


def cycles(graph):
    """Tarjan's strongly connected components of more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    crates = [pathlib.Path(a) for a in sys.argv[1:]] or sorted(
        p.parent.parent for p in root.glob("*/src/lib.rs")
    )
    found = False
    for crate in crates:
        graph = edges_of(crate / "src")
        for comp in cycles(graph):
            found = True
            names = ["::".join(m) or "lib" for m in comp]
            print(f"{crate.name}: import cycle between {', '.join(names)}")
            for m in comp:
                inside = sorted("::".join(t) or "lib" for t in graph[m] if t in comp)
                print(f"  {'::'.join(m) or 'lib'} -> {', '.join(inside)}")
    if found:
        sys.exit(1)
    print(f"no import cycle in {len(crates)} crates")


if __name__ == "__main__":
    main()
