"""Every script in examples/ runs (with a tiny random-weight model in place of the Hub one)."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("examples") / "tiny"
    tiny_model().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("script, extra, expect", [
    ("zero_shot.py", [], "red_circle.png"),
    ("dense_features.py", ["--method", "maskclip"], "patch features (1, 32, 4, 4)"),
    ("segment.py", ["--out", "{tmp}/overlay.png"], "wrote"),
    ("retrieval.py", ["--n", "4"], "image -> caption top-1 on 4 test images"),
])
def test_example_runs(script, extra, expect, model_dir, tmp_path):
    extra = [a.format(tmp=tmp_path) for a in extra]
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--model", model_dir, *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert expect in result.stdout


def test_training_example_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "train.py"), "--steps", "3", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained 3 steps" in result.stdout and "red_circle.png" in result.stdout
