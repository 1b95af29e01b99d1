"""The ``maskclip`` command line, in process (fast) and once through the installed console script."""
import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import maskclip
from maskclip.cli import build_parser, main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("cli") / "tiny"
    tiny_model().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(220, 20, 20), (20, 20, 220)]):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (70, 50), colour).save(p)
        paths.append(str(p))
    return paths


def test_models_lists_registry_with_availability(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vitb16-yfcc"]["weights"] == "not public"
    assert rows["openai-vitb16"]["act"] == "quick_gelu"


def test_classify_prints_probabilities_per_image(model_dir, images, capsys):
    assert main(["classify", *images, "--labels", "red", "blue", "--model", model_dir, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == images
    for r in out:
        assert abs(sum(item["prob"] for item in r["labels"]) - 1) < 1e-4


def test_classify_with_labels_file(model_dir, images, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("red\n\nblue\n")
    assert main(["classify", images[0], "--labels-file", str(tmp_path / "labels.txt"), "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert "red" in out and "blue" in out and "%" in out


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_embed_images_writes_the_embeddings(model_dir, images, tmp_path, suffix):
    out = tmp_path / f"emb{suffix}"
    assert main(["embed", *images, "--out", str(out), "--model", model_dir, "--normalize"]) == 0
    if suffix == ".npy":
        emb = torch.from_numpy(np.load(out))
    else:
        with safe_open(str(out), "pt") as f:
            emb = f.get_tensor("embeddings")
            assert json.loads(f.metadata()["items"]) == images
    expected = maskclip.load(model_dir).encode_image(images, normalize=True)
    assert emb.shape == (2, 32) and torch.allclose(emb, expected, atol=1e-6)


def test_embed_texts(model_dir, tmp_path):
    out = tmp_path / "t.safetensors"
    assert main(["embed", "--text", "a cat", "a dog", "--out", str(out), "--model", model_dir]) == 0
    with safe_open(str(out), "pt") as f:
        assert f.get_tensor("embeddings").shape == (2, 32)


def test_segment_writes_overlay_with_legend(model_dir, images, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    assert main(["segment", images[0], "--labels", "red", "blue", "--out", str(out), "--model", model_dir]) == 0
    picture = Image.open(out)
    assert picture.width > 70 and picture.height >= 50  # image plus a legend strip
    assert "red" in capsys.readouterr().out


def test_convert_to_open_clip_layout_and_back(model_dir, tmp_path):
    out = tmp_path / "oc"
    assert main(["convert", model_dir, str(out), "--format", "open_clip"]) == 0
    assert (out / "open_clip_config.json").exists() and (out / "open_clip_model.safetensors").exists()
    a, b = maskclip.load(model_dir), maskclip.load(out)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(a.encode_image(x), b.encode_image(x), atol=1e-6)


@pytest.mark.parametrize("argv, words", [
    (["classify", "nope.png", "--labels", "a"], "nope.png"),
    (["classify", "IMG", "--labels"], None),
    (["classify", "IMG"], "--labels"),
    (["embed", "--out", "x.npy"], "either image paths or --text"),
    (["embed", "IMG", "--out", "x.txt"], ".safetensors or .npy"),
    (["segment", "IMG", "--labels", "a", "--out", "x.gif"], ".png"),
    (["models", "--bogus"], None),
])
def test_bad_input_exits_nonzero_with_one_line_error(model_dir, images, argv, words, capsys):
    argv = [images[0] if a == "IMG" else a for a in argv]
    if argv[0] != "models":
        argv += ["--model", model_dir]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    if words:
        assert words in err and len(err.strip().splitlines()) == 1


def test_unknown_model_is_a_one_line_error(images, capsys):
    assert main(["classify", images[0], "--labels", "a", "--model", "openai-vitb61"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maskclip: error:") and "openai-vitb16" in err and "\n" not in err


@pytest.mark.parametrize("command", ["models", "classify", "embed", "segment", "convert"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage: maskclip" in capsys.readouterr().out


def _option(parser, *path_and_flag):
    """The argparse action of ``--flag`` in the subcommand ``path`` (e.g. ``"eval", "segmentation"``)."""
    *path, flag = path_and_flag
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_cli_choices_are_the_constants_they_mirror():
    from maskclip import dense, refine, serialization
    from maskclip.datasets import synthetic, writer
    from maskclip.embed import collection, output
    from maskclip.train import config

    p = build_parser()
    expected = {("segment", "--method"): dense.METHODS, ("eval", "segmentation", "--methods"): dense.METHODS,
                ("convert", "--format"): serialization.FORMATS, ("export", "--format"): serialization.FORMATS,
                ("train", "--recipe"): config.RECIPES, ("train", "--precision"): config.PRECISIONS,
                ("data", "synth", "--split"): synthetic.SPLITS, ("data", "synth", "--label"): synthetic.LABELS,
                ("data", "synth", "--format"): writer.IMAGE_FORMATS, ("train", "--distributed"): config.DISTRIBUTED,
                ("embed", "--dtype"): tuple(collection.DTYPES), ("embed", "--metadata-format"): output.METADATA_FORMATS,
                ("segment", "--refine"): refine.REFINEMENTS}
    for path, constant in expected.items():
        assert tuple(_option(p, *path).choices) == tuple(constant), path
    assert _option(p, "eval", "segmentation", "--methods").default is None  # every method the model's tower runs


@pytest.mark.parametrize("given, parsed", [("maskclip", "zhou"), ("zhou", "zhou"), ("clearclip", "clearclip")])
def test_segment_method_accepts_the_old_name_as_the_new_one(given, parsed):
    args = build_parser().parse_args(["segment", "x.png", "--labels", "a", "--out", "o.png", "--method", given])
    assert args.method == parsed
    args = build_parser().parse_args(["eval", "segmentation", "--data", "synthetic:test", "--methods", given])
    assert args.methods == [parsed]


def test_console_script_is_installed():
    exe = shutil.which("maskclip") or str(__import__("pathlib").Path(sys.executable).parent / "maskclip")
    result = subprocess.run([exe, "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "vitb16-yfcc" in result.stdout
