"""The engine's imports run one way: proxy/http/ has no import cycle and never reaches into the control plane.

Read from the source, so imports made only for type checking (`if TYPE_CHECKING:`) and imports inside
functions count as much as the ones at the top: each is a module that has to know the other.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "proxy" / "http"


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` names in an import statement, wherever the statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = ["proxy", "http"][: 3 - node.level]  # relative to a module of proxy/http/
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from proxy.http import x`
    return names


def _module_of(name: str) -> str | None:
    """The module of proxy/ that `name` is, or holds: `proxy.http.request.Request` is proxy.http.request."""
    parts = name.split(".")
    while parts and parts[0] == "proxy":
        path = ROOT.joinpath(*parts)
        if path.with_suffix(".py").is_file():
            return ".".join(parts)
        if (path / "__init__.py").is_file() and len(parts) > 1:
            return ".".join(parts)
        parts.pop()
    return None


def _engine_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(ENGINE.glob("*.py")):
        module = "proxy.http" if path.stem == "__init__" else f"proxy.http.{path.stem}"
        targets = {_module_of(name) for name in _imported_modules(path)}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, if there is any."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module not in graph:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for module in graph:
        found = visit(module)
        if found:
            return found
    return None


def test_the_graph_sees_imports_made_only_for_type_checking():
    graph = _engine_graph()
    assert "proxy.http.request" in graph["proxy.http.upstream"]  # `if TYPE_CHECKING:` only
    assert "proxy.http.client" in graph["proxy.http.server"]


def test_engine_modules_import_each_other_without_a_cycle():
    assert _cycle(_engine_graph()) is None


FIRST_PARTY = ("proxy", "thruster", "deployer", "tests")


def test_engine_imports_nothing_from_the_control_plane():
    outside = {
        (module, target)
        for module, targets in _engine_graph().items()
        for target in targets
        if not target.startswith("proxy.http")
    }
    assert outside == set()
    # Nor the rest of this repository: pythrust, the deployer, the tests, or `proxy` itself (its __init__).
    reached = {
        (path.name, name)
        for path in sorted(ENGINE.glob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in FIRST_PARTY and not name.startswith("proxy.http")
    }
    assert reached == set()
