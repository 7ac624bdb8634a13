"""Imports point one way: from the user down to the metal (docs/method.md §10, "Architecture").

Every module of the package has a stage; a module may import only from its own stage or
below, and nothing may form an import cycle. Imports made for type annotations only
(``if TYPE_CHECKING:``) do not count. The lazy conveniences of the public interface are the
only named exceptions: ``card.place`` (card → placement), ``card.to_markdown`` /
``card.to_html`` (card → report, report_html) and ``plan.lora_config`` (placement → export).
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "layerprof"
# The Triton sources: a plain top-level folder that the build installs as layerprof.kernels.
KERNEL_SOURCES = PACKAGE.parent / "kernels"

# Lowest first. Data flows capture → accumulate → reduce → finalize → card → placement → config;
# the card is plain data that both sides import, the orchestrator sits above the computations,
# and the doors (CLI, callback, study) above everything.
STAGES = [
    ("leaf", {"errors", "_version", "allocator", "fileio", "damping", "linalg", "scores", "rankcorr", "memory", "budget", "cost"}),
    ("kernels", {"kernels", "kernels.stats"}),
    ("ops", {"ops", "ops.stats", "ops.library"}),
    ("capture", {"targets", "capture"}),
    ("accumulate", {"accumulate"}),
    ("reduce", {"reduce"}),
    ("card", {"card", "schema"}),
    ("finalize", {"finalize", "coupling", "simulate", "warmup"}),
    ("placement", {"placement_search", "placement", "export"}),
    ("reports", {"report", "report_html", "plots", "compare", "outputs"}),
    ("orchestrator pieces", {"memory_plan", "profile_cost", "config", "batches", "progress", "claim", "peft_models", "build", "merge",
                             "predict", "session", "step_cost"}),
    ("orchestrator", {"profiler"}),
    ("study", {"bundled", "tasks", "study_lora", "study", "study_report", "benchmark"}),
    ("doors", {"", "callback", "cli", "cli_parser", "cli_args", "loading", "model_source", "doctor"}),
]
LAZY_CONVENIENCES = {("card", "placement"), ("card", "report"), ("card", "report_html"), ("placement", "export")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] == "bundled":
            parts = ("bundled",)  # the bundled model's package (data + its training script) is one stage
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
            targets += [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "layerprof":
            rest = node.module.split(".")[1:]
            targets.append(".".join(rest))
            targets += [".".join(rest + [a.name]) for a in node.names]
        elif isinstance(node, ast.Import):
            targets += [".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "layerprof"]
        for t in targets:
            t = "bundled" if t.split(".")[0] == "bundled" else t
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
STAGE = {m: i for i, (_, members) in enumerate(STAGES) for m in members}


def test_every_module_has_a_stage():
    assert set(MODULES) - set(STAGE) == set(), "add new modules to STAGES (and to the README's layout)"
    assert set(STAGE) - set(MODULES) == set(), "STAGES names modules that no longer exist"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = sorted(t for t in GRAPH[name] if STAGE[t] > STAGE[name] and (name, t) not in LAZY_CONVENIENCES)
    assert not up, (f"{name} ({STAGES[STAGE[name]][0]}) imports {up} from higher stages "
                    f"({[STAGES[STAGE[t]][0] for t in up]})")


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
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == dst]
        assert not top, f"{src} imports {dst} at module level"
