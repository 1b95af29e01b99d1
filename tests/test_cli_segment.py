"""``maskclip segment``'s method options: --refine, --proxy (ProxyCLIP), --sfr (ResCLIP's SFR)."""
import numpy as np
import pytest
import torch
from PIL import Image

import maskclip
from maskclip import proxy as proxies, refine
from maskclip.cli import build_parser, main

from test_cli import _option

LABELS = ["red", "blue", "green"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("cli_segment") / "tiny"
    tiny_model(seed=3).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(path)
    return str(path)


def _printed_shares(out: str) -> dict:
    """The label -> percentage lines ``segment`` prints after ``wrote``."""
    lines = [line.split() for line in out.strip().splitlines()[1:]]
    return {label: share for share, label in lines}


def _shares(label_map, labels) -> dict:
    counts = label_map.flatten().bincount(minlength=len(labels)).tolist()
    return {label: f"{c / label_map.numel():.2%}" for label, c in zip(labels, counts)}


def _run(image, model_dir, tmp_path, *flags):
    out = tmp_path / "overlay.png"
    code = main(["segment", image, "--labels", *LABELS, "--out", str(out), "--model", model_dir, *flags])
    return code, out


@pytest.mark.parametrize("flags, kwargs", [
    (["--method", "naclip", "--refine", "pamr"], dict(method="naclip", refine="pamr")),
    (["--method", "resclip", "--sfr"], dict(method="resclip", sfr=True)),
    (["--method", "resclip", "--sfr", "--refine", "pamr", "--window", "32"],
     dict(method="resclip", sfr=True, refine="pamr", window=32)),
])
def test_segment_options_give_what_segment_gives(flags, kwargs, image, model_dir, tmp_path, capsys):
    code, out = _run(image, model_dir, tmp_path, *flags)
    assert code == 0 and Image.open(out).width > 70
    expected = maskclip.load(model_dir).segment(maskclip.transforms.load_image(image), LABELS, **kwargs)
    assert _printed_shares(capsys.readouterr().out) == _shares(expected, LABELS)


def _tiny_proxy():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0,
                            dynamic_img_size=True, dynamic_img_pad=True)
    return proxies.Proxy(vit.eval())


def test_segment_proxy_runs_proxyclip_with_the_named_proxy(image, model_dir, tmp_path, capsys, monkeypatch):
    built, proxy = [], _tiny_proxy()
    monkeypatch.setattr(proxies.Proxy, "from_timm", classmethod(lambda cls, name: built.append(name) or proxy))
    code, _ = _run(image, model_dir, tmp_path, "--proxy", "dino_vitb16", "--refine", "pamr")
    assert code == 0 and built == ["dino_vitb16"]
    expected = maskclip.load(model_dir).segment(maskclip.transforms.load_image(image), LABELS, method="proxyclip",
                                                proxy=proxy, refine="pamr")
    assert _printed_shares(capsys.readouterr().out) == _shares(expected, LABELS)


@pytest.mark.parametrize("flags, words", [
    (["--sfr"], "--sfr (ResCLIP's semantic feedback refinement) needs --method resclip; got clearclip"),
    (["--method", "naclip", "--sfr"], "needs --method resclip; got naclip"),
    (["--proxy", "dino_vitb8", "--method", "naclip"], "give one of them, not both"),
    (["--proxy", "dino_vitb8", "--sfr"], "needs --method resclip; got proxyclip"),
])
def test_segment_option_misuse_is_a_one_line_error_before_the_model_loads(flags, words, image, tmp_path, capsys):
    code = main(["segment", image, "--labels", "a", "--out", str(tmp_path / "o.png"), "--model", "no-such-model",
                 *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err  # the flags are refused, not the model


def test_segment_unknown_proxy_and_refinement_are_one_line_errors(image, model_dir, tmp_path, capsys):
    code, _ = _run(image, model_dir, tmp_path, "--proxy", "no_such_vit")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "proxy must be one of ['dino_vitb8'" in err and "'no_such_vit'" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        _run(image, model_dir, tmp_path, "--refine", "crf")
    assert e.value.code == 2 and "invalid choice: 'crf'" in capsys.readouterr().err


def test_segment_choices_are_the_constants_they_mirror(capsys):
    p = build_parser()
    assert tuple(_option(p, "segment", "--refine").choices) == refine.REFINEMENTS
    assert _option(p, "segment", "--method").default is None  # clearclip, unless --proxy makes it proxyclip
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in proxies.PROXIES) and "pamr" in help_text


# --- --compare: methods side by side -------------------------------------------------------------------


def _printed_table(out: str) -> dict:
    """``segment --compare``'s table after ``wrote``: {panel title: {label: share}}."""
    lines = out.strip().splitlines()[1:]
    titles = [t.strip() for t in lines[0].split("  ") if t.strip()]
    table = {t: {} for t in titles}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        for title, share in zip(titles, cells[1:]):
            table[title][cells[0]] = share
    return table


def test_compare_draws_each_method_beside_the_image_with_what_segment_gives(image, model_dir, tmp_path, capsys):
    code, out = _run(image, model_dir, tmp_path, "--compare", "naclip,sclip,maskclip", "--refine", "pamr")
    assert code == 0
    table = _printed_table(capsys.readouterr().out)
    assert list(table) == ["naclip + pamr", "sclip + pamr", "zhou + pamr"]  # the alias drawn as its name
    model, picture = maskclip.load(model_dir), maskclip.transforms.load_image(image)
    for title, method in zip(table, ("naclip", "sclip", "zhou")):
        assert table[title] == _shares(model.segment(picture, LABELS, method=method, refine="pamr"), LABELS)
    grid = Image.open(out)
    assert grid.width > 4 * 70 and grid.height > 50  # the image and three overlays in one row, then the legend


def test_compare_lays_out_panels_in_even_rows_with_one_legend():
    from maskclip.visualize import compare

    picture = Image.new("RGB", (40, 30), (10, 20, 30))
    maps = [(f"m{i}", torch.full((30, 40), i % 3, dtype=torch.long)) for i in range(4)]  # 5 panels: 3 + 2
    one_row = compare(picture, maps[:1], LABELS)
    grid = compare(picture, maps, LABELS)
    assert grid.width == one_row.width + 40 + 8 and grid.height > one_row.height
    # the second overlay (label 1 everywhere) is blue-ish where the first (label 0) is red-ish
    assert grid.getpixel((2 * 48 + 20, 40)) != grid.getpixel((48 + 20, 40))
    with pytest.raises(ValueError, match="label map is 40x30 but the image is 50x30"):
        compare(Image.new("RGB", (50, 30)), maps, LABELS)


@pytest.mark.parametrize("flags, message", [
    (["--compare", "naclip,foo"], "expected dense methods separated by commas"),
    (["--compare", "naclip,naclip"], "each method once"),
    (["--compare", "naclip", "--method", "zhou"], "give --method or --compare, not both"),
    (["--compare", "naclip,sclip", "--sfr"], "refines the resclip panel; --compare naclip,sclip has none"),
])
def test_compare_misuse_is_a_one_line_error(flags, message, image, model_dir, tmp_path, capsys):
    try:  # argparse exits for a bad --compare value; a bad combination is main's CLIError, returned as 2
        code, _ = _run(image, model_dir, tmp_path, *flags)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
