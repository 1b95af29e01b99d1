"""Every Python package under maskclip/ is listed in pyproject.toml, so the wheel ships it."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_directory():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "maskclip").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"


def test_no_module_shadows_a_standard_library_module():
    # A module named like a standard one (io.py, for instance) is what `import io` finds when a
    # script runs from inside the package folder, and it misleads every reader of an import line.
    import sys

    modules = {p.stem for p in (ROOT / "maskclip").rglob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (ROOT / "maskclip").rglob("__init__.py")}
    assert not (modules | packages) & set(sys.stdlib_module_names)
