"""The package reads as its layers: imports flow one way (data at the bottom, cli at the top),
no import cycles even through function-level imports, modules <= 600 lines, functions <= 80."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dalle2_md"
# lower layers first; a module may import its own layer and those before it
LAYERS = ["version", "defaults", "utils", "sampling", "data", "models", "training", "evaluation", "generation",
          "augmentation", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Every dalle2_md module `path` imports, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dalle2_md":
            subpackage = node.module.count(".") == 1 and (PACKAGE / node.module.split(".")[1]).is_dir()
            targets = [f"{node.module}.{a.name}" for a in node.names] if node.module == "dalle2_md" or subpackage \
                else [node.module]
            found += [(t, node.lineno) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "dalle2_md"]
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(p): imports_of(p) for p in SOURCES}


def test_every_subpackage_has_a_layer_and_says_what_it_owns():
    for sub in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert sub.name in LAYERS, f"{sub.name}/ has no place in the layers"
        assert len((ast.get_docstring(ast.parse((sub / "__init__.py").read_text())) or "").splitlines()) >= 3, sub


def test_imports_flow_down_the_layers():
    upward = [f"{m} -> {t} (line {line})" for m, targets in GRAPH.items() if m != "dalle2_md"
              for t, line in targets if layer(t) > layer(m)]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = {m: {t for t, _ in targets if t in GRAPH and t != m} for m, targets in GRAPH.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_modules_and_functions_stay_readable():
    long_modules = [f"{p.relative_to(PACKAGE)}: {n}" for p in SOURCES if (n := len(p.read_text().splitlines())) > 600]
    long_functions = [f"{p.relative_to(PACKAGE)}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1}"
                      for p in SOURCES for f in ast.walk(ast.parse(p.read_text()))
                      if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert not long_modules and not long_functions, long_modules + long_functions


def test_the_checks_above_can_fail():
    """The graph is read at all: known edges are there (a layer test over an empty graph passes)."""
    assert any(t.startswith("dalle2_md.models.compat") for t, _ in GRAPH["dalle2_md.models.decoder"])
    assert layer("dalle2_md.cli.main") > layer("dalle2_md.data.labels")
