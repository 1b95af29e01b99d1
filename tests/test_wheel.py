"""The built wheel ships the BPE merges and tokenizes correctly when installed, away from the source tree.

Builds from a copy of the repository (so the shared working tree gets no build/ or egg-info
droppings), installs the wheel with --no-deps into a fresh venv, and borrows this interpreter's
dependencies through a .pth file. A .pth file only adds its lines to sys.path: .pth files inside
the added directory (such as the editable-install hook of this dev environment) are not processed,
so `maskclip` can only come from the wheel.
"""
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import ftfy
import pytest
import regex
import torch

from maskclip.tokenizer import tokenize

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXTS = ["a photo of a cat", "", "Ünïcödé &amp; émoji 👍🏽", "a " * 100]
# Not part of a build; weights and run outputs may be large.
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", ".venv", "runs", "*.pt", "*.bin")

CHILD_SCRIPT = """
import importlib.resources, json, sys
import maskclip
from maskclip.tokenizer import tokenize
merges = importlib.resources.files("maskclip.bpe") / "bpe_simple_vocab_16e6.txt.gz"
texts = json.loads(sys.argv[1])
print(json.dumps({"maskclip": maskclip.__file__, "merges": str(merges), "ids": tokenize(texts).tolist()}))
"""


def _setuptools_is_recent() -> bool:
    """setuptools >= 64 (PEP 660 era, needed by pyproject.toml) is importable here."""
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 64


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    """Build the wheel of a copy of the repository; returns the .whl path."""
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCE)
    # Without build isolation no download is needed; otherwise pip fetches setuptools from PyPI.
    isolation = ["--no-build-isolation"] if _setuptools_is_recent() else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                    "-w", str(tmp_path / "wheels"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("maskclip-*.whl")
    return wheel


def _fresh_venv_with_wheel(tmp_path: pathlib.Path, wheel: pathlib.Path) -> pathlib.Path:
    """A venv holding only the wheel, seeing this interpreter's dependencies; returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    dependency_dirs = dict.fromkeys(str(pathlib.Path(m.__file__).resolve().parent.parent)
                                    for m in (torch, ftfy, regex))
    (pathlib.Path(purelib) / "outer_dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    return python


@pytest.mark.slow
def test_installed_wheel_ships_merges_and_tokenizes_like_the_source_tree(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"maskclip/bpe/bpe_simple_vocab_16e6.txt.gz", "maskclip/bpe/NOTICE"} <= names

    python = _fresh_venv_with_wheel(tmp_path, wheel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([str(python), "-c", CHILD_SCRIPT, json.dumps(TEXTS)], cwd=tmp_path, env=env,
                            check=True, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    venv = (tmp_path / "venv").resolve()
    assert pathlib.Path(report["maskclip"]).resolve().is_relative_to(venv)
    assert pathlib.Path(report["merges"]).resolve().is_relative_to(venv)
    assert not pathlib.Path(report["maskclip"]).resolve().is_relative_to(REPO_ROOT)
    assert report["ids"] == tokenize(TEXTS).tolist()
    assert report["ids"][0][:7] == [49406, 320, 1125, 539, 320, 2368, 49407]

    # The data the package reads at run time ships too, and the bundled model loads from the wheel offline.
    assert {"maskclip/weights/tiny-shapes/model.safetensors", "maskclip/weights/tiny-shapes/config.json",
            "maskclip/resources/presets.json", "maskclip/resources/synthetic.json", "maskclip/resources/registry.json"} <= names
    loaded = subprocess.run([str(python), "-c", "import maskclip, maskclip.datasets; m = maskclip.load('tiny-shapes'); "
                             "print(maskclip.__file__, m.classify(maskclip.datasets.SyntheticShapes('test', 32, 2)[0].image, "
                             "['a red circle', 'a blue square']).shape)"],
                            cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=120)
    where, shape = loaded.stdout.split(" ", 1)
    assert pathlib.Path(where).resolve().is_relative_to(venv) and shape.strip() == "torch.Size([1, 2])"
