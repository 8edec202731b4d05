#!/usr/bin/env python3
"""Module-level dependency cycles of a Rust crate, from its source.

usage: python3 .ci/cycles.py SRC [DEPTH...]   (exit 1 when there is a cycle)
Every file is a module (a/b.rs and a/b/mod.rs -> a::b). A -> B when A's
non-test code names `crate::B…` (`use` lines, `{…}` groups, inline paths)
or `super::…` that resolves to B. Edges between a module and its own
ancestors are ignored (a mod.rs re-exporting its children, a child using
its parent's items). DEPTH > 0 first collapses every module to its first
DEPTH path components (1: config, server, api, process, …); 0 is the
files themselves. Without DEPTH both are checked: files (0) and top-level
directories (1). Prints every strongly connected component with more than
one member, per depth."""
import os, re, sys
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
depths = [int(d) for d in sys.argv[2:]] or [0, 1]
mods = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'):
            continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] == 'mod':
            rel = rel[:-1]
        if rel in (['lib'], ['main']):
            rel = []
        mods['::'.join(rel)] = p

def strip(src):
    """Source without comments and `#[cfg(test)] mod … { … }` blocks."""
    src = re.sub(r'//[^\n]*', '', src)
    out, i = [], 0
    for m in re.finditer(r'#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{', src):
        if m.start() < i:
            continue
        out.append(src[i:m.start()])
        level, j = 1, m.end()
        while level and j < len(src):
            level += {'{': 1, '}': -1}.get(src[j], 0)
            j += 1
        i = j
    out.append(src[i:])
    return ''.join(out)

def resolve(path):
    parts = [x for x in path.split('::') if x]
    for n in range(len(parts), 0, -1):
        c = '::'.join(parts[:n])
        if c in mods:
            return c
    return None

sys.setrecursionlimit(10000)

def check(depth):
    """Prints the cycles among modules collapsed to DEPTH components; their number."""
    def collapse(m):
        return '::'.join(m.split('::')[:depth]) if depth else m

    edges = {}
    for m, p in mods.items():
        if m == '':
            continue  # lib.rs / main.rs: the module map itself
        src = strip(open(p).read())
        parent = m.rsplit('::', 1)[0] if '::' in m else ''
        paths = re.findall(r'\bcrate((?:::\w+)+)', src)
        for g in re.finditer(r'\b(crate|super)::((?:\w+::)*)\{([^}]*)\}', src):
            pre = g.group(2) if g.group(1) == 'crate' else (parent + '::' + g.group(2) if parent else g.group(2))
            for item in g.group(3).split(','):
                item = item.strip().split(' as ')[0]
                paths.append(pre + ('' if item in ('', 'self') else item))
        for x in re.findall(r'\bsuper((?:::\w+)+)', src):
            paths.append(parent + x if parent else x)
        a = collapse(m)
        for t in map(resolve, paths):
            if t is None:
                continue
            b = collapse(t)
            if a == b or a.startswith(b + '::') or b.startswith(a + '::'):
                continue
            edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set())

    idx, low, on, st, sccs, n = {}, {}, set(), [], [], [0]
    def visit(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in sorted(edges[v]):
            if w not in idx:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))
    for v in sorted(edges):
        if v not in idx:
            visit(v)
    for comp in sccs:
        print('cycle:', ' '.join(comp))
        for a in comp:
            for b in sorted(edges[a] & set(comp)):
                print(f'    {a} -> {b}')
    print(f'depth {depth or "leaf"}: {len(edges)} modules, '
          f'{sum(map(len, edges.values()))} edges, {len(sccs)} cycles')
    return len(sccs)


sys.exit(1 if sum([check(d) for d in depths]) else 0)
