"""The package's shape (docs/design.md, section 7): imports point one way (train/eval/bench -> models -> layers ->
ops), no module imports a private name of another, no import cycles (imports inside functions included), and the
ops keep their stages apart: ``dla.ops.chunked`` never imports Triton."""

import ast
import pathlib

import dla

ROOT = pathlib.Path(dla.__file__).parent
LEVEL = {"ops": 0, "layers": 1, "models": 2, "data": 2, "train": 3, "eval": 3, "bench": 3, "study": 3}


def _modules():
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("dla",) + path.relative_to(ROOT).with_suffix("").parts)
        mods[name[:-9] if name.endswith(".__init__") else name] = path
    return mods


def _resolve(name, mods):
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mods):
    """``{module: [(imported module, imported name or None, line)]}`` over every import statement."""
    out = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(_resolve(a.name, mods), None, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    full = f"{base}.{a.name}"
                    found.append((full, None, node.lineno) if full in mods else
                                 (_resolve(base, mods), a.name, node.lineno))
        out[name] = [(m, n, line) for m, n, line in found if m is not None and m != name]
    return out


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {t for t, _, _ in imps} for m, imps in _imports(mods).items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v, counter=[0]):  # Tarjan's strongly connected components
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_private_names_across_modules():
    bad = [f"{m}:{line} imports {t}.{n}" for m, imps in _imports(_modules()).items() for t, n, line in imps
           if n is not None and n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_dependencies_point_one_way():
    def level(mod):
        parts = mod.split(".")
        return LEVEL.get(parts[1]) if len(parts) > 1 else None

    bad = []
    for m, imps in _imports(_modules()).items():
        for t, _, line in imps:
            lm, lt = level(m), level(t)
            if lm is not None and lt is not None and lt > lm:
                bad.append(f"{m}:{line} imports {t}")
    assert not bad, bad


def test_pytorch_stages_never_import_triton():
    for path in (ROOT / "ops" / "chunked").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
        names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "triton" or n.startswith("dla.ops.triton")], path
