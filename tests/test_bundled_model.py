"""The bundled tiny-shapes model: loads offline with no download, and is better than chance on held-out data."""
import subprocess
import sys
from pathlib import Path

import torch

import maskclip
from maskclip.eval import image_text_retrieval, zero_shot_classification

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_shapes_loads_from_the_package_in_fp32_and_is_registered():
    model = maskclip.load("tiny-shapes")
    assert model.config.name == "tiny-shapes" and model.dtype == torch.float32
    info = maskclip.model_info("tiny-shapes")
    assert info["bundled"] and len(info["sha256"]) == 64 and info["weights_available"]
    assert (ROOT / "maskclip" / info["bundled"] / "model.safetensors").stat().st_size < 15 * 2 ** 20


def test_tiny_shapes_tells_shapes_on_held_out_single_object_images_and_is_well_above_chance_on_the_rest():
    """The issue's bar for the bundled model: zero-shot shape >= 0.6 on single-object test images."""
    model = maskclip.load("tiny-shapes")
    single = zero_shot_classification(model, "synthetic:test,version=3,n=300,objects=1-1", progress=False)
    assert single["top1"] >= 0.6  # 8 shapes, chance 0.125
    scenes = zero_shot_classification(model, "synthetic:test,version=3,n=300", progress=False)
    assert scenes["top1"] > 2.5 * scenes["chance_top1"]  # the main object of 1-3, with occlusion
    colour_shape = zero_shot_classification(model, "synthetic:test,version=3,n=300,label=colour_shape", progress=False)
    assert colour_shape["top1"] > 4 * colour_shape["chance_top1"]  # 80 classes
    retrieval = image_text_retrieval(model, "synthetic:test,version=3,n=300", progress=False)
    assert retrieval["text_to_image_R@1"] > 20 * retrieval["chance_text_to_image_R@1"]


def test_the_readme_main_job_runs_offline_with_the_default_model(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    labels = ["a red circle", "a red square", "a red triangle", "a blue circle"]  # shapes in one colour, colours in one shape
    images = sorted(str(p) for p in (ROOT / "examples" / "images").glob("*.png"))
    assert [Path(p).stem for p in images] == ["blue_circle", "red_circle", "red_square", "red_triangle"]
    out = subprocess.run([sys.executable, "-m", "maskclip.cli", "classify", *images, "--labels", *labels],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    for path in images:
        block = out.stdout.split(Path(path).name)[1].splitlines()[1]
        assert Path(path).stem.replace("_", " ") in block, out.stdout  # the top label of each example image is its own
    seg = subprocess.run([sys.executable, "-m", "maskclip.cli", "segment", str(ROOT / "examples" / "scene.png"),
                          "--labels", "background", "a red circle", "a purple cross", "--method", "maskclip",
                          "--out", str(tmp_path / "o.png")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert seg.returncode == 0, seg.stderr
    assert (tmp_path / "o.png").stat().st_size > 1000
