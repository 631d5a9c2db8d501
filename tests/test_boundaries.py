"""The one-way dependency rule, checked on what really gets imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

CORE = [
    "medsam_core." + m
    for m in ("imageio", "models", "predictor", "cache", "evaluation", "outputs", "metrics", "deidentify", "backends")
]
STORE = ["portal.store." + m for m in ("models", "store", "blobs", "embeddings", "migrate", "settings", "runtime")] + [
    "portal.store.services." + m
    for m in (
        "annotations",
        "images",
        "masks",
        "model_versions",
        "projects",
        "users",
        "gc",
        "jobs",
        "training",
        "evaluations",
        "submissions",
    )
]


def imported_after(modules: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return {line.split(".")[0] for line in out.splitlines()}


@pytest.mark.parametrize(
    "modules, forbidden",
    [
        (CORE, {"portal", "workers", "sqlalchemy", "celery", "gradio", "fastapi", "pydantic_settings"}),
        (STORE, {"workers", "celery", "gradio", "fastapi"}),
    ],
)
def test_imports_point_one_way(modules, forbidden):
    assert imported_after(modules) & forbidden == set()


# -- every module, read statically: lazy imports inside functions count too ------------------------

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medsam_core", "portal", "workers")
# All the web side may know of the workers: the queue port and the task names it sends.
WEB_MAY_IMPORT = {"workers", "workers.queue", "workers.names"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of the modules a module imports (``from a import b``: ``a``, and ``a.b`` if a module)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up ``level - 1`` packages from this one
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names} & MODULES  # submodules, not other names
    return found


MODULES = set(all_modules())


def test_every_module_is_checked():
    assert {"workers.queue", "workers.names", "portal.web.app", "portal.store.runtime"} <= MODULES


@pytest.mark.parametrize(
    "owner, rule, allowed",
    [
        ("workers", lambda imported: imported.startswith("portal.web"), set()),
        ("portal.store", lambda imported: imported.split(".")[0] == "workers", set()),
        ("medsam_core", lambda imported: imported.split(".")[0] in {"portal", "workers"}, set()),
        ("portal.web", lambda imported: imported.split(".")[0] == "workers", WEB_MAY_IMPORT),
    ],
)
def test_no_module_imports_across_a_boundary(owner, rule, allowed):
    wrong = {
        f"{name} imports {imported}"
        for name, path in all_modules().items()
        if name == owner or name.startswith(owner + ".")
        for imported in imports_of(name, path)
        if rule(imported) and imported not in allowed
    }
    assert not wrong, sorted(wrong)


def test_no_import_cycle():
    """Lazy imports inside functions count: deferring an import hides a cycle, it does not remove it.

    A package importing its own submodules (``portal.web.api.routers``) is how packages work, not a cycle.
    """
    modules = all_modules()
    graph = {
        name: {i for i in imports_of(name, path) if i in modules and i != name and not i.startswith(name + ".")}
        for name, path in modules.items()
    }
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(name) :] + [name]))
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_importing_the_web_app_loads_only_the_queue_port_of_the_workers():
    code = (
        "import sys, portal.web.app, portal.web.api.models, portal.web.api.training\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('workers')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    assert set(out) <= WEB_MAY_IMPORT and "workers.queue" in out


def test_no_settings_are_read_at_import():
    """Settings that cannot even be parsed break nothing until something is built from them."""
    modules = [
        "workers",
        "workers.app",
        "workers.queue",
        "workers.tasks",
        "workers.training_tasks",
        "workers.evaluation_tasks",
        "workers.reaper",
        "portal.web.app",
        "portal.cli",
    ]
    code = "".join(f"import {m}\n" for m in modules) + (
        "from portal.store.settings import get_settings\n"
        "try:\n    get_settings()\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
    )
    env = {**os.environ, "MEDSAM_MODEL_POOL_SIZE": "not a number"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ValidationError"  # the settings really were unreadable


# -- one service shape: SQL lives in the services, and the services take a Session ------------------

ROUTE_MODULES = sorted(p for p in (ROOT / "portal" / "web" / "api").glob("*.py") if p.name != "__init__.py") + [
    ROOT / "portal" / "web" / "auth.py"
]
# Every service takes ``db: Session`` (plus the BlobStore or Settings it needs), never the Store.
SESSION_SERVICES = sorted(
    p.stem for p in (ROOT / "portal" / "store" / "services").glob("*.py") if p.name != "__init__.py"
)


def _imported_names(path: Path) -> set[tuple[str, str]]:
    return {
        (node.module or "", alias.name)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


@pytest.mark.parametrize("path", ROUTE_MODULES, ids=lambda p: p.name)
def test_routes_run_no_sql(path):
    """Queries belong to the services; a route that builds one has a rule nobody else can reuse or test."""
    sql = {
        (module, name)
        for module, name in _imported_names(path)
        if module.split(".")[0] == "sqlalchemy" and name in {"select", "func", "update", "delete", "insert", "text"}
    }
    assert not sql, sorted(sql)


@pytest.mark.parametrize("name", SESSION_SERVICES)
def test_services_take_a_session_not_the_store(name):
    """The caller owns the transaction: a service that opens its own cannot join a request's."""
    path = ROOT / "portal" / "store" / "services" / f"{name}.py"
    assert ("portal.store.store", "Store") not in _imported_names(path)
    assert "store.transaction(" not in path.read_text()
