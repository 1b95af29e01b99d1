"""``maskclip eval ...`` and ``maskclip data synth`` on the command line (in process)."""
import json

import pytest

from maskclip.cli import main
from maskclip.datasets.manifest import read_manifest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_model

    folder = tmp_path_factory.mktemp("cli-eval") / "tiny"
    tiny_model().save_pretrained(folder)
    return str(folder)


def _run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_zeroshot_writes_results_json(model_dir, tmp_path, capsys):
    out = tmp_path / "zs.json"
    code, stdout, _ = _run(["eval", "zeroshot", "--model", model_dir, "--data", "synthetic:test,n=6",
                            "--out", str(out), "--no-progress"], capsys)
    assert code == 0 and "top1" in stdout and f"wrote {out}" in stdout
    r = json.loads(out.read_text())
    assert r["task"] == "zero_shot_classification" and r["n"] == 6


def test_eval_without_out_prints_strict_json(model_dir, capsys):
    code, stdout, _ = _run(["eval", "segmentation", "--model", model_dir, "--data", "synthetic:test,n=1",
                            "--methods", "clearclip", "--no-progress"], capsys)
    r = json.loads(stdout)  # absent classes' IoU is null, not NaN
    assert code == 0 and list(r["methods"]) == ["clearclip"]
    assert None in r["methods"]["clearclip"]["all_classes"]["per_class_iou"].values()


def test_data_synth_shards_feed_eval_retrieval_and_linear_probe(model_dir, tmp_path, capsys):
    code, stdout, _ = _run(["data", "synth", "--out", str(tmp_path / "shards"), "--split", "val", "--n", "6",
                            "--size", "48x64", "--shards", "2"], capsys)
    assert code == 0 and "wrote 6 samples" in stdout
    manifest = tmp_path / "shards" / "val.json"
    assert read_manifest(manifest)["shards"] == ["val-00000.tar", "val-00001.tar"]
    code, _, _ = _run(["eval", "retrieval", "--model", model_dir, "--data", str(tmp_path / "shards"),
                       "--out", str(tmp_path / "r.json"), "--no-progress"], capsys)
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["n_texts"] == 30
    code, stdout, _ = _run(["eval", "linear-probe", "--model", model_dir, "--train", "synthetic:train,n=10",
                            "--test", str(manifest), "--weight-decays", "0.01", "--max-iter", "20",
                            "--out", str(tmp_path / "p.json"), "--no-progress"], capsys)
    assert code == 0 and "weight decay 0.01" in stdout


@pytest.mark.parametrize("args, message", [
    (["eval", "zeroshot", "--data", "no/such/dir"], "not found"),
    (["eval", "zeroshot", "--data", "synthetic:test,n=2", "--batch-size", "0"], "batch_size"),
    (["eval", "segmentation", "--data", "synthetic:test,n=1", "--size", "-3"], "size"),
    (["data", "synth", "--out", "x", "--size", "4"], "size"),
])
def test_bad_input_ends_with_one_line_error_and_status_2(model_dir, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(args + (["--model", model_dir] if args[0] == "eval" else []), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("maskclip: error:") and message in lines[-1]


@pytest.mark.parametrize("command", [["eval"], ["eval", "zeroshot"], ["eval", "retrieval"], ["eval", "linear-probe"],
                                     ["eval", "segmentation"], ["data", "synth"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    assert e.value.code == 0 and "usage: maskclip " + " ".join(command) in capsys.readouterr().out
