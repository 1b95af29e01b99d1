"""maskclip's SentencePieceTokenizer against open_clip's HFTokenizer (transformers inside) on captions.

    python benchmarks/spm_tokenizer.py                    # SigLIP/SigLIP2-shaped repos trained here
    python benchmarks/spm_tokenizer.py --folder DIR ...   # real repo folders, e.g. Hub snapshots of
                                                          # timm/ViT-B-16-SigLIP and timm/ViT-B-16-SigLIP2
    python benchmarks/spm_tokenizer.py --texts 2000 --repeats 1   # a quick sanity run

Each folder is tokenized by both (the same `context_length`, open_clip's clean-up from the folder's
open_clip_config.json; a folder without one is compared with transformers' AutoTokenizer), the
contenders alternating within every repeat; the table gives median seconds, texts per second and the
fraction of rows whose ids differ (should be 0). Needs the bench and siglip extras.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import texts  # noqa: E402  (puts tests/ on sys.path)
from timing import alternate, loadavg  # noqa: E402

import spm_files  # noqa: E402

from maskclip.spm_tokenizer import SentencePieceTokenizer  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", action="append", type=Path, help="a tokenizer folder (repeatable)")
    p.add_argument("--texts", type=int, default=10_000, help="number of captions (default 10,000)")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def trained_folders(root: Path) -> list:
    """The SigLIP (Unigram) and SigLIP2 (Gemma BPE) open_clip-layout folders of the tests, trained on captions."""
    training = texts.captions(2000, seed=1)
    repos = spm_files.build_repos(root, spm_files.trained_unigram_pieces(training, 2000),
                                  spm_files.gemma_shaped_json(training, 3000))
    return [repos["siglip_open_clip"], repos["siglip2_open_clip"]]


def reference(folder: Path, context_length: int):
    """(name, call) of the library tokenizer maskclip must match for this folder."""
    config = folder / "open_clip_config.json"
    if config.is_file():
        from open_clip.tokenizer import HFTokenizer

        kwargs = json.loads(config.read_text())["model_cfg"]["text_cfg"].get("tokenizer_kwargs", {})
        tokenizer = HFTokenizer(str(folder), context_length=context_length, **kwargs)
        return "open_clip HFTokenizer", tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return "transformers", lambda strings: tokenizer(strings, padding="max_length", max_length=context_length,
                                                     truncation=True, return_tensors="pt").input_ids


def compare(folder: Path, strings: list, repeats: int) -> list:
    ours = SentencePieceTokenizer.from_folder(folder)
    name, theirs = reference(folder, ours.context_length)
    results = alternate({"maskclip": lambda: ours(strings), name: lambda: theirs(strings)}, repeats=repeats)
    ids, ref = results["maskclip"].output, results[name].output
    differing = (ids != ref).any(dim=1).float().mean().item()
    return [(folder.name, r.name, r.median, len(strings) / r.median, differing) for r in results.values()]


def main(argv=None) -> None:
    args = parse_args(argv)
    strings = texts.captions(args.texts)
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.folder or trained_folders(Path(tmp))
        rows = [row for folder in folders for row in compare(folder, strings, args.repeats)]
    print(f"{len(strings):,} captions, {args.repeats} repeat(s), load average {loadavg()}\n")
    print("| folder | tokenizer | median s | texts/s | rows differing |")
    print("|---|---|---:|---:|---:|")
    for folder, name, seconds, rate, differing in rows:
        print(f"| {folder} | {name} | {seconds:.3f} | {rate:,.0f} | {differing:.4f} |")


if __name__ == "__main__":
    main()
