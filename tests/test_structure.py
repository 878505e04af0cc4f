"""The shape issue 13 gave the code, kept: no module under the apps over 500 lines (migrations and tests aside), no
function over 80 lines in a services module, and every services package re-exports what it defines publicly."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ["accounts", "attribution", "common", "config", "core", "datanets", "ledger", "modelfactory"]
MAX_MODULE_LINES = 500
MAX_SERVICE_FUNCTION_LINES = 80


def _modules():
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def test_no_module_is_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _service_functions():
    for app in APPS:
        folder = ROOT / app / "services"
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{path.relative_to(ROOT)}:{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_in_services_is_over_80_lines():
    functions = dict(_service_functions())
    assert len(functions) > 100  # the walk found the services packages
    assert {name: n for name, n in functions.items() if n > MAX_SERVICE_FUNCTION_LINES} == {}


@pytest.mark.parametrize("app", ["accounts", "attribution", "datanets", "ledger", "modelfactory"])
def test_services_are_a_package_that_re_exports_every_public_name(app):
    package = importlib.import_module(f"{app}.services")
    assert Path(package.__file__).name == "__init__.py"
    for path in sorted((ROOT / app / "services").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"{app}.services.{path.stem}")
        tree = ast.parse(path.read_text())
        public = [
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)
            and not node.name.startswith("_")
            and getattr(module, node.name).__module__ == module.__name__
        ]
        missing = [name for name in public if getattr(package, name, None) is not getattr(module, name)]
        assert missing == [], f"{app}.services does not re-export {missing} from {path.name}"
