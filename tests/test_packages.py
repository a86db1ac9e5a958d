"""The packages' public API (`__all__`, lazy re-exports) and cheap imports.

Importing a package, or the CLI module, must not import Prefect, MLflow, hdbscan, plotly or
scikit-learn: those load inside the commands that need them, so `segmentation validate`
answers quickly. Each check of imports runs in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HEAVY = ("prefect", "mlflow", "hdbscan", "plotly", "sklearn")
PACKAGES = ("configs", "features", "segmentation", "models", "pipelines")
LAZY_PACKAGES = ("features", "segmentation", "models", "pipelines")
ROOT = Path(__file__).resolve().parents[1]

_LOADED_HEAVY = (
    "import importlib, json, sys\n"
    "{setup}\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


def _heavy_after(setup: str, *args: str) -> list[str]:
    """The heavy modules loaded by a fresh interpreter after running `setup`."""
    code = _LOADED_HEAVY.format(setup=setup)
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["pipelines.cli", *PACKAGES])
def test_importing_is_cheap(module: str) -> None:
    assert _heavy_after("importlib.import_module(sys.argv[1])", module) == []


def test_validate_command_imports_nothing_heavy(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("client_id,event_time,event_type\na,2024-01-01,purchase\n")
    setup = (
        "from pipelines.cli import main\n"
        "code = main(['validate', '--events', sys.argv[1]])\n"
        "assert code == 0, code"
    )
    assert _heavy_after(setup, str(events)) == []


def _submodules(package: ModuleType) -> list[str]:
    return [info.name for info in pkgutil.iter_modules(package.__path__)]


def _type_checking_imports(package: ModuleType) -> dict[str, str]:
    """name -> module of the `from m import name` lines under `if TYPE_CHECKING:`."""
    assert package.__file__ is not None
    tree = ast.parse(Path(package.__file__).read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module is not None
                found.update({alias.name: stmt.module for alias in stmt.names})
    return found


@pytest.mark.parametrize("name", PACKAGES)
def test_package_states_its_api(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__doc__ and "Layer:" in package.__doc__
    public = package.__all__
    assert len(set(public)) == len(public)
    assert set(public) <= set(dir(package))
    for attribute in public:
        value = getattr(package, attribute)
        origin = getattr(value, "__module__", None)
        if isinstance(origin, str) and origin.startswith(f"{name}."):
            module = importlib.import_module(origin)
            assert getattr(module, attribute) is value
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = package.nothing_here


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_exports_agree(name: str) -> None:
    """`__all__`, the TYPE_CHECKING imports and the runtime map name the same things, each
    from a module that declares it public (in its `__all__`, when it has one)."""
    package = importlib.import_module(name)
    exports = package._EXPORTS
    assert sorted(exports) == sorted(package.__all__)
    assert _type_checking_imports(package) == exports
    assert not set(exports) & set(_submodules(package)), "a name would hide a submodule"
    for attribute, module_name in exports.items():
        module = importlib.import_module(module_name)
        assert getattr(package, attribute) is getattr(module, attribute)
        declared = getattr(module, "__all__", None)
        assert declared is None or attribute in declared, f"{module_name}.__all__"


def test_configs_exports_every_public_class_and_function() -> None:
    import configs

    for info in pkgutil.iter_modules(configs.__path__):
        module = importlib.import_module(f"configs.{info.name}")
        for attribute, value in vars(module).items():
            own = getattr(value, "__module__", None) == module.__name__
            if own and not attribute.startswith("_") and callable(value):
                assert attribute in configs.__all__, f"configs.{info.name}.{attribute}"


@pytest.mark.parametrize("name", PACKAGES)
def test_module_all_names_exist(name: str) -> None:
    package = importlib.import_module(name)
    modules = [package]
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
        modules.append(importlib.import_module(info.name))
    for module in modules:
        for attribute in getattr(module, "__all__", ()):
            assert hasattr(module, attribute), f"{module.__name__}.__all__ names {attribute!r}"
