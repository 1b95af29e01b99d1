"""Speed of maskclip's tokenizer against open_clip's on 10,000 strings, with an id-for-id check.

    python benchmarks/bench_tokenizer.py

Two workloads, both 10,000 distinct strings, each run on a fresh tokenizer (cold caches, fair to
both sides):
- captions: web-caption-like sentences and filled ImageNet prompt templates, ~15% with non-ASCII or
  HTML bits (accents, curly quotes, emoji, "&amp;"), as in alt-text data.
- stress: the exotic test corpus (tests/tokenizer_corpus.py), ~60% of it needs ftfy, deduplicated.
ftfy.fix_text dominates the cost of any text it must see, so the ratio depends on that share.
"""
import pathlib
import random
import sys
import time

import open_clip
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from maskclip.tokenizer import Tokenizer  # noqa: E402
from tokenizer_corpus import corpus  # noqa: E402

SUBJECTS = ["a dog", "two cats", "an old man", "a young woman", "kids", "a red car", "the team", "a chef",
            "a bride", "my grandmother", "a golden retriever", "three horses", "a cyclist", "the band"]
ACTIONS = ["running", "sitting", "sleeping", "playing", "standing", "walking", "posing", "cooking",
           "dancing", "waiting", "smiling", "jumping", "reading a book", "eating pizza"]
PLACES = ["on the beach", "in the park", "at sunset", "in a kitchen", "on a busy street", "in the snow",
          "near a lake", "in front of the Eiffel Tower", "at the office", "under a tree", "in New York"]
EXTRAS = ["", "", "", ", 4k wallpaper", " - stock photo", " (2019)", ", photo by John Smith", " #travel",
          ", high resolution", " | free download", ", vintage postcard", ", oil on canvas"]
NON_ASCII = [" café", " in São Paulo", " — “best day ever”", " 😍", " 👍🏽", " it’s", " &amp; friends",
             " naïve art", " in Zürich", " ©2020", " 🇫🇷", " in Köln", " Ⅱ", " 東京"]


def caption_workload(n: int = 10_000, seed: int = 0) -> list:
    """`n` distinct caption-like strings: 2/3 sentences, 1/3 filled prompt templates."""
    rng = random.Random(seed)
    classes = (ROOT / "maskclip" / "data" / "imagenet_classnames.txt").read_text().splitlines()
    templates = ["a photo of a {}.", "a bad photo of the {}.", "a sculpture of a {}.", "itap of a {}.",
                 "a close-up photo of the {}.", "a rendering of a {}.", "art of the {}."]
    texts = set()
    while len(texts) < n:
        if rng.random() < 1 / 3:
            text = rng.choice(templates).format(rng.choice(classes))
        else:
            text = " ".join([rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)]) + rng.choice(EXTRAS)
            text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
            text += f" {rng.randint(1, 9999)}" if rng.random() < 0.3 else ""
        if rng.random() < 0.15:
            text += rng.choice(NON_ASCII)
        texts.add(text)
    return sorted(texts, key=lambda _: rng.random())


def stress_workload(n: int = 10_000) -> list:
    """`n` distinct strings of the exotic test corpus."""
    return list(dict.fromkeys(corpus(3 * n, seed=1)))[:n]


def best_time(make_tokenizer, texts: list, repeats: int = 3) -> float:
    """Best wall time of one batched call on a fresh tokenizer (cold caches)."""
    times = []
    for _ in range(repeats):
        tokenizer = make_tokenizer()
        start = time.perf_counter()
        tokenizer(texts)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    """Print time per workload for both tokenizers, the ratio, and whether all ids agree."""
    reference = open_clip.get_tokenizer("ViT-B-16")
    for name, texts in [("captions", caption_workload()), ("stress", stress_workload())]:
        same = torch.equal(reference(texts), Tokenizer()(texts))
        theirs = best_time(lambda: open_clip.tokenizer.SimpleTokenizer(), texts)
        ours = best_time(Tokenizer, texts)
        print(f"{name:9s} n={len(texts)}  open_clip {theirs:.3f} s  maskclip {ours:.3f} s  "
              f"ratio {theirs / ours:.2f}x  identical ids: {same}")


if __name__ == "__main__":
    main()
