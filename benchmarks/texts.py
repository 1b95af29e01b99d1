"""Text inputs of the benchmarks: zero-shot prompts, caption-like strings, the exotic test corpus.

All deterministic (``random.Random(seed)`` only), so every run and every contender sees the same texts.
"""
import random
import sys
from pathlib import Path

import maskclip

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

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


def templates() -> list:
    """OpenAI's 80 ImageNet prompt templates."""
    return maskclip.zero_shot.resolve_templates("openai_imagenet")


def classnames(n: int) -> list:
    """``n`` ImageNet class names spread evenly over the 1000 (a fixed subset)."""
    names = maskclip.imagenet_classnames()
    return [names[i * len(names) // n] for i in range(n)]


def prompts(n_classes: int) -> list:
    """Zero-shot prompts: ``n_classes`` class names x the 80 templates, class-major."""
    return [t.replace("{}", c) for c in classnames(n_classes) for t in templates()]


def captions(n: int = 10_000, seed: int = 0) -> list:
    """``n`` distinct caption-like strings: 2/3 sentences, 1/3 filled prompt templates, ~15% with
    non-ASCII or HTML bits (accents, curly quotes, emoji, "&amp;"), as in alt-text data."""
    rng = random.Random(seed)
    names, temps = maskclip.imagenet_classnames(), templates()
    texts = set()
    while len(texts) < n:
        if rng.random() < 1 / 3:
            text = rng.choice(temps).replace("{}", rng.choice(names))
        else:
            text = " ".join([rng.choice(SUBJECTS), rng.choice(ACTIONS), rng.choice(PLACES)]) + rng.choice(EXTRAS)
            text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
            text += f" {rng.randint(1, 9999)}" if rng.random() < 0.3 else ""
        if rng.random() < 0.15:
            text += rng.choice(NON_ASCII)
        texts.add(text)
    return sorted(texts, key=lambda _: rng.random())


def exotic(n: int = 10_000) -> list:
    """``n`` distinct strings of the tokenizer test corpus (~60% need ftfy: mojibake, HTML, scripts)."""
    return list(dict.fromkeys(corpus(3 * n, seed=1)))[:n]
