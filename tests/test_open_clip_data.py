"""Data in open_clip's conventions: CSV/TSV with ``filepath`` + ``title`` (tab-separated even when named
``.csv``), ``--csv-img-key`` / ``--csv-caption-key`` / ``--csv-separator``, for training and evaluation."""
import json

import pytest
from PIL import Image

from maskclip.cli import main
from maskclip.datasets import ColumnError, Table, parse_separator
from maskclip.train.cli import add_arguments, config_from_args
from maskclip.train.config import TrainConfig
from maskclip.train.data import open_source

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("oc") / "tiny"
    tiny_model().save_pretrained(folder)
    return str(folder)


def _images(folder, n=8):
    names = []
    for i in range(n):
        colour = "red" if i % 2 else "blue"
        name = f"img{i}.png"
        Image.new("RGB", (40 + i, 36), COLOURS[colour]).save(folder / name)
        names.append((name, colour))
    return names


def _write(path, header, rows, sep):
    path.write_text("\n".join(sep.join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def _open_clip_table(folder, name="train.csv", header=("filepath", "title"), sep="\t"):
    rows = [(f, f"a {c} square") for f, c in _images(folder)]
    return _write(folder / name, header, rows, sep)


def test_training_config_reads_open_clip_default_columns_from_a_tab_separated_csv(tmp_path):
    path = _open_clip_table(tmp_path)
    cfg = TrainConfig.from_preset("tiny", "clip", {"data": [path]})
    source = open_source(cfg.data, cfg.csv_image_key, cfg.csv_caption_key, cfg.csv_separator)
    assert source.size == 8
    sample = source.record(3)
    assert sample.image == str(tmp_path / "img3.png") and sample.captions == ["a red square"]


def test_training_reads_image_caption_and_filepath_caption_tables_alike(tmp_path):
    rows = [(f, f"a {c} square") for f, c in _images(tmp_path)]
    for header in (("image", "caption"), ("filepath", "caption"), ("path", "title")):
        path = _write(tmp_path / f"{'_'.join(header)}.csv", header, rows, ",")
        source = open_source([path], "", "")
        assert source.size == 8 and source.record(0).captions == ["a blue square"]


def test_explicit_keys_must_exist_and_ambiguous_columns_are_refused_naming_the_columns(tmp_path):
    path = _open_clip_table(tmp_path)
    with pytest.raises(ColumnError, match=r"has columns \['filepath', 'title'\]; expected column 'url'"):
        open_source([path], "url", "")
    both = _write(tmp_path / "both.csv", ("filepath", "caption", "title"), [("img0.png", "a", "b")], ",")
    with pytest.raises(ColumnError, match=r"\['caption', 'title'\] could each be the caption column.*--csv-caption"):
        open_source([both], "", "")
    assert open_source([both], "", "title").record(0).captions == ["b"]


def test_the_separator_flag_overrides_the_sniffed_one(tmp_path):
    # A semicolon table: sniffing sees neither tabs nor commas and takes one column.
    path = _write(tmp_path / "semi.csv", ("filepath", "title"), [("img0.png", "a, b")], ";")
    _images(tmp_path, 1)
    with pytest.raises(ColumnError, match="filepath;title"):
        Table(path)
    assert Table(path, separator=";")[0].captions == ["a, b"]
    assert parse_separator("\\t") == "\t" and parse_separator("tab") == "\t" and parse_separator(",") == ","
    with pytest.raises(ValueError, match="one character"):
        parse_separator(";;")


def test_train_cli_flags_spell_open_clip_and_reach_the_config(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--recipe", "clip", "--preset", "tiny", "--out", str(tmp_path), "--data", "x.csv",
                         "--csv-img-key", "filepath", "--csv-caption-key", "title", "--csv-separator", "\\t"])
    cfg = config_from_args(args)
    assert (cfg.csv_image_key, cfg.csv_caption_key, cfg.csv_separator) == ("filepath", "title", "\t")
    default = config_from_args(p.parse_args(["--recipe", "clip", "--preset", "tiny", "--out", str(tmp_path)]))
    assert (default.csv_image_key, default.csv_caption_key, default.csv_separator) == ("", "", "")


def test_maskclip_train_runs_on_an_open_clip_tsv(tmp_path, capsys):
    path = _open_clip_table(tmp_path, "train.tsv")
    out = tmp_path / "run"
    code = main(["train", "--recipe", "clip", "--preset", "tiny", "--data", path, "--batch-size", "4",
                 "--steps", "2", "--workers", "0", "--out", str(out), "--set", "progress=false"])
    assert code == 0, capsys.readouterr().err
    assert "finished at step 2/2" in capsys.readouterr().out


def test_eval_retrieval_and_zeroshot_on_open_clip_tables_with_named_keys(tmp_path, model_dir, capsys):
    names = _images(tmp_path)
    rows = [(c, f, f"a {c} square") for f, c in names]
    path = _write(tmp_path / "eval.csv", ("label", "img", "cap"), rows, "\t")
    assert main(["eval", "retrieval", "--model", model_dir, "--data", path, "--csv-img-key", "img",
                 "--csv-caption-key", "cap", "--csv-separator", "\\t", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_images"] == 8 and r["n_texts"] == 8
    assert main(["eval", "zeroshot", "--model", model_dir, "--data", path, "--csv-img-key", "img",
                 "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 8
    assert main(["eval", "retrieval", "--model", model_dir, "--data", path, "--no-progress"]) == 2
    assert "no image column" in capsys.readouterr().err
