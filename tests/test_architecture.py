"""Imports point one way: from the user down to the metal (docs/method.md §10, "Architecture").

The package's folders are the pipeline's stages. Each subpackage sits on a floor; a module may
import from its own package or from packages on lower floors, never up, and no modules form an
import cycle (a layers contract, as import-linter states one). Imports made for type annotations
only (``if TYPE_CHECKING:``) do not count. The lazy conveniences of the public interface are the
only named exceptions: ``card.place`` / ``card.cost_model`` (card → place), ``card.to_markdown`` /
``card.to_html`` (card → output.report, output.report_html) and ``plan.lora_config``
(place → output.export). The study's harness is fenced: only the CLI imports it.
"""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "layerprof"
# The Triton sources: a plain top-level folder that the build installs as layerprof.kernels.
KERNEL_SOURCES = PACKAGE.parent / "kernels"

# Lowest first. Data flows capture → accumulate → reduce → finalize (stats) → card → place →
# output; the card is plain data that both sides read, the pipeline drives the stages, and the
# doors (the package's front, the CLI, the callback's import path) sit above everything.
FLOORS = [
    {"utils", "kernels", "_version"},
    {"card"},
    {"model"},
    {"stats"},
    {"predict"},
    {"place"},
    {"output"},
    {"pipeline"},
    {"study", "integrations"},
    {"", "cli", "callback"},
]
LAZY_CONVENIENCES = {("card.card", "place.placement"), ("card.card", "output.report"),
                     ("card.card", "output.report_html"), ("place.placement", "output.export")}
STUDY_MAY_BE_IMPORTED_BY = {"study", "cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[:2] == ("model", "bundled"):
            parts = ("model", "bundled")  # the bundled model's package (data + its training script) is one module
        name = ".".join(p for p in parts if p != "__init__")
        out.setdefault(name, path)
    for path in sorted(KERNEL_SOURCES.glob("*.py")):
        out.setdefault(f"kernels.{path.stem}", path)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".") if name else []
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        targets = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                targets.append(".".join(base + node.module.split(".")))
            targets += [".".join(base + (node.module.split(".") if node.module else []) + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "layerprof":
            rest = node.module.split(".")[1:]
            targets.append(".".join(rest))
            targets += [".".join(rest + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            targets += [".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "layerprof"]
        for t in targets:
            if t.startswith("model.bundled"):
                t = "model.bundled"
            while t and t not in known:  # `from .ops import stats` names a module; `from .card import X` does not
                t = t.rpartition(".")[0]
                if not t:
                    t = None  # nothing named: not the package itself either
                    break
            if t is not None and t in known and t != name:
                found.add(t)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path, set(MODULES)) for name, path in MODULES.items()}
FLOOR = {pkg: i for i, members in enumerate(FLOORS) for pkg in members}


def _package(module: str) -> str:
    return module.split(".")[0]


def test_every_module_is_in_a_package_on_a_floor():
    assert {_package(m) for m in MODULES} - set(FLOOR) == set(), "put new packages on a floor (and in README's tree)"
    assert set(FLOOR) - {_package(m) for m in MODULES} == set(), "FLOORS names packages that no longer exist"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = sorted(t for t in GRAPH[name]
                if FLOOR[_package(t)] > FLOOR[_package(name)] and (name, t) not in LAZY_CONVENIENCES)
    assert not up, f"{name} (floor {FLOOR[_package(name)]}) imports {up} from higher floors"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_packages_on_one_floor_do_not_import_each_other(name):
    """Neighbours stay apart; a door may use the package's public front (``import layerprof as lp``)."""
    side = sorted(t for t in GRAPH[name]
                  if _package(t) != _package(name) and FLOOR[_package(t)] == FLOOR[_package(name)] and t != "")
    assert not side, f"{name} imports {side} from a package on its own floor"


def test_the_study_is_fenced():
    """The product never needs the study's harness: only the CLI's `study` command imports it."""
    bad = sorted((n, t) for n, ts in GRAPH.items() for t in ts
                 if _package(t) == "study" and _package(n) not in STUDY_MAY_BE_IMPORTED_BY)
    assert not bad, f"study imported from outside the CLI: {bad}"


def test_kernels_import_nothing_of_layerprof():
    """The Triton sources are copied into wheels as they are: they must stand alone."""
    bad = {n: sorted(ts) for n, ts in GRAPH.items() if _package(n) == "kernels" and n != "kernels" and ts}
    assert not bad, bad


def test_no_import_cycles():
    graph = {n: {t for t in ts if (n, t) not in LAZY_CONVENIENCES} for n, ts in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, path):
        state[n] = 1
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, f"import cycles: {cycles}"


def test_the_lazy_conveniences_are_lazy():
    """The named exceptions import inside the method, never at module level."""
    for src, dst in LAZY_CONVENIENCES:
        tree = ast.parse(MODULES[src].read_text())
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and (n.module or "").lstrip(".").endswith(dst.split(".")[-1])]
        assert not top, f"{src} imports {dst} at module level"


def test_every_package_says_what_it_owns():
    """Each subpackage's __init__ opens with a paragraph on what it holds (the README's tree repeats its first line)."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init.relative_to(PACKAGE.parent)} needs a docstring paragraph"


def test_the_contributing_tree_is_the_packages():
    """CONTRIBUTING.md's layout lists every subpackage with its docstring's first line, and nothing else."""
    text = (PACKAGE.parent / "CONTRIBUTING.md").read_text()
    listed = dict(re.findall(r"^      (\w+)/ +(.+)$", text, flags=re.M))
    inits = {p.parent.name: p for p in sorted(PACKAGE.glob("*/__init__.py"))}
    assert set(listed) == set(inits), f"CONTRIBUTING.md lists {sorted(listed)}, the package has {sorted(inits)}"
    for name, init in inits.items():
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if name != "kernels":
            assert listed[name] == doc.splitlines()[0], f"{name}: CONTRIBUTING.md says {listed[name]!r}"
