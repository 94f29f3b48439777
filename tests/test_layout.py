"""The shape of the package: no import circle between kddiag's modules, no function too complex to read."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "kddiag"
MAX_COMPLEXITY = 15  # McCabe's own threshold for "too complex to test"; flake8's C901 counts the same way


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


# --- import graph -------------------------------------------------------------------------------

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
            or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(node: ast.AST, *, type_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """The imports run when the module is imported: not those inside functions, nor (unless ``type_only``)
    those under ``if TYPE_CHECKING:``."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test) and not type_only:
            found += [item for statement in child.orelse
                      for item in _module_level_imports(ast.Module([statement], []), type_only=type_only)]
        else:
            found += _module_level_imports(child, type_only=type_only)
    return found


def _imported(statement: ast.Import | ast.ImportFrom) -> list[str]:
    """The kddiag modules ``statement`` names: ``from kddiag.metrics import domain`` names the submodule."""
    if isinstance(statement, ast.Import):
        names = [alias.name for alias in statement.names]
    else:
        base = statement.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in statement.names]
    modules = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        modules += [name] if name.startswith("kddiag") else []
    return modules


def import_graph(*, type_only: bool = False) -> dict[str, set[str]]:
    """Module -> the kddiag modules it imports at module level (``type_only``: with ``if TYPE_CHECKING:``)."""
    return {name: {target for statement in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")),
                                                                 type_only=type_only)
                   for target in _imported(statement) if target != name}
            for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its first module repeated at the end), or None."""
    state: dict[str, str] = {}  # 'open' while on the path, 'done' once every import below it was walked
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := walk(module)):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_the_imports_python_runs():
    graph = import_graph()
    assert "kddiag.types" in graph["kddiag.results"]  # from kddiag.types import …
    assert "kddiag.levels.domain" in graph["kddiag.measure"]  # from kddiag.levels import …, domain, …
    assert "kddiag.pipeline" not in graph["kddiag"]  # imported inside inspect(): not at import time


@pytest.mark.parametrize("type_only", [False, True], ids=["run-time", "with TYPE_CHECKING"])
def test_no_import_circle(type_only):
    cycle = find_cycle(import_graph(type_only=type_only))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


# --- cyclomatic complexity ----------------------------------------------------------------------

def _decisions(statement: ast.stmt) -> int:
    """The paths ``statement`` adds, counted as the ``mccabe`` package (flake8's C901) counts them: +1 per
    if/elif, loop and nested function, +1 per except clause and +1 per try; boolean operators,
    comprehensions and conditional expressions add nothing, nor does a ``finally`` or ``match`` body."""
    if isinstance(statement, (ast.If, ast.For, ast.AsyncFor, ast.While)):
        return 1 + _all_decisions(statement.body) + _all_decisions(statement.orelse)
    if isinstance(statement, ast.Try):
        return (1 + len(statement.handlers) + _all_decisions(statement.body) + _all_decisions(statement.orelse)
                + sum(_all_decisions(handler.body) for handler in statement.handlers))
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return 1 + _all_decisions(statement.body)
    if isinstance(statement, (ast.ClassDef, ast.With, ast.AsyncWith)):
        return _all_decisions(statement.body)
    return 0


def _all_decisions(statements: list[ast.stmt]) -> int:
    return sum(_decisions(statement) for statement in statements)


def complexities(tree: ast.Module) -> dict[str, int]:
    """Cyclomatic complexity of every function and method (``Class.method``), and of each compound
    statement at module level ('If 12'), as ``python -m mccabe`` reports them."""
    found: dict[str, int] = {}

    def visit(statements: list[ast.stmt], prefix: str) -> None:
        for statement in statements:
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + statement.name] = 1 + _all_decisions(statement.body)
            elif isinstance(statement, ast.ClassDef):
                visit(statement.body, f"{prefix}{statement.name}.")
            elif isinstance(statement, (ast.With, ast.AsyncWith)):
                visit(statement.body, prefix)
            elif isinstance(statement, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try)):
                kind = ("If" if isinstance(statement, ast.If) else "TryExcept" if isinstance(statement, ast.Try)
                        else "Loop")
                found[f"{prefix}{kind} {statement.lineno}"] = 1 + _decisions(statement)

    visit(tree.body, "")
    return found


def test_complexity_counts_as_mccabe_does():
    source = '''
def f(x):
    if x and x > 1:           # +1 (the "and" adds nothing)
        return [y for y in x if y]
    elif x:                   # +1
        pass
    for y in x:               # +1
        while y:              # +1
            y -= 1
        else:
            pass
    try:                      # +1
        pass
    except ValueError:        # +1
        pass
    except TypeError:         # +1
        pass
    finally:
        if x:                 # not counted: mccabe skips finally
            pass
    def g():                  # +1
        if x:                 # +1
            pass
    with open(x):
        if x:                 # +1
            pass
    return x if x else None

class A:
    def m(self):
        return 1
'''
    assert complexities(ast.parse(source)) == {"f": 11, "A.m": 1}
    mccabe = pytest.importorskip("mccabe")
    visitor = mccabe.PathGraphingAstVisitor()
    visitor.preorder(ast.parse(source), visitor)
    assert {name: graph.complexity() for name, graph in visitor.graphs.items()} == {"f": 11, "A.m": 1}


def test_every_function_is_at_most_max_complexity():
    too_complex = [f"{path.relative_to(PACKAGE.parent)}::{name} {value}"
                   for path in MODULES.values()
                   for name, value in complexities(ast.parse(path.read_text(encoding="utf-8"))).items()
                   if value > MAX_COMPLEXITY]
    assert not too_complex, f"cyclomatic complexity above {MAX_COMPLEXITY}: " + ", ".join(too_complex)
