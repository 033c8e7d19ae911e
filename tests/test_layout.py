"""The package's layout: a few loose modules beside one package per part, and the command's dispatcher imported by
nothing but ``python -m deeplab_lightning`` (the subcommands share helpers through ``commands/options.py``)."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "deeplab_lightning"


def _imports(path: Path) -> set[str]:
    """The absolute names of the modules ``path`` imports (relative imports resolved)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]  # a module's package, or the package an __init__.py is
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_console_entry_imports_the_dispatcher():
    importers = {str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if p != PACKAGE / "commands" / "__init__.py" and "deeplab_lightning.commands" in _imports(p)}
    assert importers == {"deeplab_lightning/__main__.py"}


def test_the_top_level_names_the_architecture():
    loose = {p.name for p in PACKAGE.glob("*.py")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert loose == {"__init__.py", "__main__.py", "module.py", "predictor.py", "compat.py"}
    assert packages == {"ablate", "callbacks", "commands", "data", "evaluation", "models", "official", "runs",
                        "training"}


def test_an_old_module_path_imports_its_new_module_with_a_deprecation_warning():
    import importlib
    import sys

    import pytest

    import deeplab_lightning.commands.cli

    sys.modules.pop("deeplab_lightning.cli", None)
    with pytest.warns(DeprecationWarning, match="deeplab_lightning.cli is now deeplab_lightning.commands.cli"):
        old = importlib.import_module("deeplab_lightning.cli")
    assert old is deeplab_lightning.commands.cli and old.__name__ == "deeplab_lightning.commands.cli"
    with pytest.warns(DeprecationWarning):
        from deeplab_lightning.run_folder import claim_run_folder  # noqa: F401 - the old spelling of a name
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("deeplab_lightning.no_such_module")
