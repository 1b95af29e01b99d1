"""Packaging promises: what importing maskclip pulls in, and what it declares."""
import subprocess
import sys
from pathlib import Path

import pytest


def test_import_does_not_load_torchvision_or_timm():
    code = "import sys, maskclip; print('torchvision' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_runtime_dependencies_are_exactly_the_agreed_ones():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    names = {d.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
             for d in meta["project"]["dependencies"]}
    # numpy and tqdm come with torch/timm anyway, but the package imports them, so it declares them.
    assert names == {"torch", "timm", "huggingface_hub", "safetensors", "ftfy", "regex", "pillow", "numpy", "tqdm"}
