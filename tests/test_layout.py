"""The package's folders are its architecture (docs/architecture.md): checked, not just drawn.

- `lint-imports` keeps the contracts in pyproject.toml, and they do catch a layer broken on
  purpose in a scratch copy of the package;
- no import cycle between the package's modules, counting imports inside functions (so none
  can dodge a cycle); the imports inside functions that remain say why, in a comment;
- the package's top level holds the folders and nothing else new;
- every module path the docs and the README mention imports (and its attribute exists).
"""

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mountaineer_db"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

FOLDERS = {"settings", "engines", "requests", "replicas", "observability", "migrations", "servers", "testing"}
TOP_MODULES = {"__init__", "exceptions", "cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported mountaineer_db module or package, line, inside a function) for each import in `path`.

    Imports under `if TYPE_CHECKING:` are left out: they never run.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                if target.split(".")[0] == "mountaineer_db":
                    for alias in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{target}.{alias.name}"
                        found.append((sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                                      or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else target,
                                      child.lineno, inside))
            elif isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inside) for a in child.names if a.name.startswith("mountaineer_db"))
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "templates" not in path.parts}


def test_lint_imports_keeps_every_contract() -> None:
    result = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: (\d+) kept, 0 broken", result.stdout), result.stdout
    kept = int(re.search(r"Contracts: (\d+) kept", result.stdout).group(1))  # type: ignore[union-attr]
    assert kept >= 5


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("engines/scram.py", "import mountaineer_db.requests.session", "Layers"),
        ("replicas/replica_set.py", "import mountaineer_db.requests.dependencies", "Layers"),
        ("servers/cluster.py", "import mountaineer_db.engines.engine", "Local servers import nothing above settings"),
        ("migrations/lock.py", "import mountaineer_db.requests.session", "Migrations use engines and settings"),
        ("observability/health.py", "import mountaineer_db.testing", "Nothing in the package imports the test kit"),
        ("engines/engine.py", "import mountaineer_db.observability.tracing", "Engines, replicas, settings"),
    ],
)
def test_the_contracts_catch_a_broken_rule(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "mountaineer_db", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "mountaineer_db" / module
    # Inside a function, as the old cycles were dodged: the contracts count those imports too.
    target.write_text(target.read_text() + f"\n\ndef _sneaky() -> None:\n    {bad_import}  # noqa\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0, result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts") :]
    assert contract in broken
    assert bad_import.removeprefix("import ") in broken


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports_of(path):
            if target in graph and target != name:
                graph[name].add(target)
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            strongconnect(node)
    assert cycles == []


def test_imports_inside_functions_say_why() -> None:
    unexplained = []
    for name, path in package_modules().items():
        lines = path.read_text().splitlines()
        if any(line.startswith("# Imports inside functions:") for line in lines):
            continue  # one reason for the whole module
        for target, lineno, inside in imports_of(path):
            if not inside:
                continue
            around = lines[max(0, lineno - 4) : lineno]  # its line and the three above
            if not any("#" in line for line in around):
                unexplained.append(f"{name}:{lineno} imports {target}")
    assert unexplained == []


def test_the_top_level_holds_the_folders() -> None:
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders == FOLDERS
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules - SHIMS.keys() == TOP_MODULES, "a new module belongs in a folder (docs/architecture.md)"


DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def _mentioned_paths() -> list[str]:
    found: set[str] = set()
    for doc in DOCS:
        found.update(re.findall(r"(?<![\w./-])mountaineer_db(?:\.[A-Za-z_]\w*)+", doc.read_text()))
    return sorted(found)


@pytest.mark.parametrize("dotted", _mentioned_paths())
def test_every_module_path_the_docs_mention_imports(dotted: str) -> None:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            thing: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            assert hasattr(thing, attribute), f"{dotted}: {'.'.join(parts[:cut])} has no {attribute}"
            thing = getattr(thing, attribute)
        return
    pytest.fail(f"{dotted} does not import")


def test_every_source_file_the_docs_mention_exists() -> None:
    missing = []
    for doc in DOCS:
        for path in re.findall(r"(?<![\w/])mountaineer_db/[\w/]+\.py", doc.read_text()):
            if not (ROOT / path).is_file():
                missing.append(f"{doc.name}: {path}")
    assert missing == []


# The old flat module paths a user could have imported (the docs, the README and tests/typing_usage.py
# named them): thin re-exports, so that code written before the regrouping keeps working. The env.py
# template imports only `mountaineer_db.migrations`, which did not move.
SHIMS: dict[str, tuple[str, ...]] = {
    "admin": ("migrations.admin",),
    "embedded": ("servers.embedded",),
    "metrics": ("observability.metrics", "engines.metrics"),
    "prometheus": ("observability.prometheus",),
    "tracing": ("observability.tracing",),
    "pgbouncer": ("servers.pgbouncer",),
    "origins": ("engines.origins",),
    "stale_statements": ("engines.stale_statements",),
}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_an_old_module_path_still_gives_the_same_objects(old: str) -> None:
    shim = importlib.import_module(f"mountaineer_db.{old}")
    expected: dict[str, object] = {}
    for new in SHIMS[old]:
        module = importlib.import_module(f"mountaineer_db.{new}")
        expected.update({name: getattr(module, name) for name in module.__all__})
    assert sorted(shim.__all__) == sorted(expected)
    for name, value in expected.items():
        assert getattr(shim, name) is value, f"mountaineer_db.{old}.{name}"


def test_the_old_replicas_path_still_gives_replica_status() -> None:
    from mountaineer_db.replicas import replica_status
    from mountaineer_db.replicas.replica_set import replica_status as moved

    assert replica_status is moved


def test_nothing_in_the_package_imports_an_old_path() -> None:
    shims = {f"mountaineer_db.{old}" for old in SHIMS}
    importers = [
        f"{name} imports {target}"
        for name, path in package_modules().items()
        if name not in shims
        for target, _, _ in imports_of(path)
        if target in shims
    ]
    assert importers == []
    # Nor does importing the package load one.
    code = "import sys, mountaineer_db, mountaineer_db.cli, mountaineer_db.testing; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert [shim for shim in sorted(shims) if f"'{shim}'" in loaded] == []


# mountaineer_db.__all__ before the regrouping (main 92c7622): every name stays, at the top.
PUBLIC_BEFORE = (
    "AsyncSession",
    "ClientDisconnectedError",
    "ClusterError",
    "ConfigurationError",
    "DatabaseAdminError",
    "DatabaseCheck",
    "DatabaseConfig",
    "DatabaseConfigError",
    "DatabaseDependencies",
    "DatabaseNotSetUpError",
    "DatabaseStatus",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "MountaineerDBError",
    "PoolType",
    "ReadOnlySessionError",
    "ReadRouting",
    "ReadSessionDep",
    "ResourceAlreadyExistsError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "SchemaChangedError",
    "SessionDep",
    "check_database",
    "database_lifespan",
    "database_session",
    "dispose_engines",
    "get_or_404",
    "map_integrity_errors",
    "on_commit",
    "run_in_transaction",
)


def test_the_public_api_kept_every_name() -> None:
    import mountaineer_db

    assert sorted(set(PUBLIC_BEFORE) - set(mountaineer_db.__all__)) == []
    for name in mountaineer_db.__all__:
        assert getattr(mountaineer_db, name) is not None, name
