"""The package's layering rules, read from the source (nothing is imported):

* no module imports a ``_private`` name from another module of darts_amend (package-internal
  helpers live in ``_``-prefixed modules under public names, e.g. ``diagnostics/_random.py``);
* no import circle between the modules of darts_amend, counting imports inside functions
  (lazy imports hide a circle at run time but keep it in the design); imports under
  ``if TYPE_CHECKING:`` are left out (they never run);
* the option registry agrees with the estimators' signatures.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from darts_amend import estimators, options

PACKAGE = Path(__file__).resolve().parent.parent / "darts_amend"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` in ``module`` reads from."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every runtime import."""
    tree = ast.parse(MODULES[module].read_text())
    skip = _type_checking_nodes(tree)
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for a in node.names:
                sub = f"{source}.{a.name}"
                if sub in MODULES:  # `from . import module`: a module, not a name
                    out.append((sub, None, node.lineno))
                else:
                    out.append((source, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] == "darts_amend"]


def test_no_private_names_cross_modules() -> None:
    bad = [
        f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {name} from {source}"
        for module in MODULES
        for source, name, line in _imports(module)
        if name is not None and name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for source, _, _ in _imports(module):
            if source in MODULES and source != module:
                # a package's own __init__ re-exporting its submodules is not a circle with them
                if module.startswith(source + ".") and _is_package(source):
                    continue
                graph[module].add(source)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_structure_checks_can_fail() -> None:
    """The checks find what they look for (a circle and a private import, planted)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    node = ast.parse("from ..hvp import _grad").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _absolute("darts_amend.testing.dense", node) == "darts_amend.hvp"
    assert "darts_amend.supernet.derive" in MODULES


@pytest.mark.parametrize("name", sorted(estimators.ESTIMATORS))
def test_option_registry_matches_signatures(name: str) -> None:
    sig = inspect.signature(estimators.ESTIMATORS[name])
    keywords = {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "loss_fn"
    }
    assert list(keywords) == list(options.ESTIMATOR_OPTIONS[name])
    assert keywords == options.estimator_options(name)


def test_option_registry_covers_the_estimators() -> None:
    assert list(options.ESTIMATOR_OPTIONS) == list(estimators.ESTIMATORS)
    used = {o for names in options.ESTIMATOR_OPTIONS.values() for o in names}
    assert used == set(options.OPTIONS)
    for spec in options.OPTIONS.values():
        spec.check(spec.name, spec.default)  # every default is valid
        assert spec.doc and spec.valid


@pytest.mark.parametrize(
    ("option", "value"),
    [("eta", -0.1), ("gamma", 0.0), ("iterations", 0), ("mode", "fast"), ("r", 0),
     ("chunks", 1.5), ("second_order_batch", 0), ("fast_depthwise", 1), ("xi", float("nan"))],
)
def test_option_registry_rejects(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"invalid {option}"):
        options.OPTIONS[option].check(option, value)


# the public names of the modules that were split, as they were before the split
_KEPT_NAMES = {
    "darts_amend.hvp": [
        "MODES", "NonFiniteLossError", "Products", "batch_size", "check_batch", "hessian_matvec",
        "hessian_vector_product", "list_cosine", "list_dot", "list_norm", "mixed_vector_product",
        "preserve_state", "resolve_loss", "second_order_products", "split_batch",
        "split_parameters", "take_batch", "unwrap_model",
    ],
    "darts_amend.estimators": [
        "ESTIMATORS", "Hypergradient", "amended", "conjugate_gradient", "estimator_options",
        "first_order", "get_estimator", "implicit_cg", "implicit_neumann", "neumann_series",
        "unrolled", "validate_options", "write_grads_",
    ],
    "darts_amend.supernet.search": [
        "MixedOp", "SearchCell", "SearchNetwork", "build_search_network", "channel_shuffle",
        "derive_cell", "is_converged", "kept_edges", "parameter_free_share",
    ],
    "darts_amend.supernet.nb201": [
        "NB201Genotype", "NB201_DARTS", "ResidualBlock", "NB201SearchNetwork", "NB201Network",
        "derive_nb201",
    ],
}


@pytest.mark.parametrize("module", sorted(_KEPT_NAMES))
def test_public_names_survive_the_split(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    missing = [n for n in _KEPT_NAMES[module] if n not in mod.__all__ or not hasattr(mod, n)]
    assert not missing, f"{module} lost {missing}"


def test_every_all_name_exists() -> None:
    import importlib

    for name in MODULES:
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        missing = [
            n for n in getattr(mod, "__all__", ())
            if not hasattr(mod, n) and f"{name}.{n}" not in MODULES  # a submodule: lazy
        ]
        assert not missing, f"{name}.__all__ names {missing}, which it does not define"
