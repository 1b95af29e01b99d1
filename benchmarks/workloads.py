"""The workloads: each builds its inputs, times the contenders side by side and checks their outputs.

Every workload returns a dict: its title, parameters, one row per contender (times, median,
spread, peak memory, items per second, max |difference| of its output from the reference) and
the load average before and after. Models run under ``torch.inference_mode()``, as inference
code should.
"""
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

import maskclip
from maskclip.tokenizer import Tokenizer

import texts
from contenders import Contenders, hf_features
from timing import Result, alternate, loadavg


@dataclass(frozen=True)
class Sizes:
    """Workload sizes and repeats of one run mode."""

    repeats: int
    tokenizer_texts: int
    image_batch: int
    text_classes: int          # encode_text: this many classes x 80 templates
    zero_shot_classes: int     # classifier build: this many classes x 80 templates
    zero_shot_repeats: int
    dense_batch: int
    variants: bool             # time maskclip's compile and bf16 paths too


FULL = Sizes(repeats=3, tokenizer_texts=10_000, image_batch=16, text_classes=3, zero_shot_classes=100,
             zero_shot_repeats=1, dense_batch=2, variants=True)
QUICK = Sizes(repeats=1, tokenizer_texts=10_000, image_batch=16, text_classes=1, zero_shot_classes=2,
              zero_shot_repeats=1, dense_batch=1, variants=False)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rows(results: Dict[str, Result], items: int, reference: Optional[str],
         diff: Callable[[object, object], float] = max_diff) -> list:
    """Table rows: timing statistics, throughput and the output's difference from ``reference``."""
    ref = results[reference].output if reference else None
    out = []
    for name, r in results.items():
        out.append({
            "contender": name, "median_s": r.median, "min_s": min(r.times), "max_s": max(r.times),
            "times_s": r.times, "items_per_s": items / r.median, "peak_mb": r.peak_mb,
            "diff": None if ref is None or name == reference else diff(r.output, ref),
        })
    return out


def workload(title: str, params: dict, run: Callable[[], list]) -> dict:
    before = loadavg()
    table = run()
    return {"title": title, "params": params, "rows": table, "loadavg_before": before, "loadavg_after": loadavg()}


# --- tokenizer ---------------------------------------------------------------------------------

def _pad_eot_ids(ids: torch.Tensor) -> torch.Tensor:
    """transformers pads with EOT (49407), OpenAI/open_clip with 0: zero everything after the first EOT."""
    first_eot = (ids == Tokenizer.eot_token_id).int().argmax(dim=1, keepdim=True)
    return ids.masked_fill(torch.arange(ids.shape[1]) > first_eot, 0)


def _rows_differing(ids, ref) -> float:
    """Fraction of rows whose ids are not all identical to the reference's."""
    return 1.0 - (ids == ref).all(dim=1).float().mean().item()


def tokenizer(c: Contenders, sizes: Sizes, exotic: bool = False) -> dict:
    import open_clip

    strings = texts.exotic(sizes.tokenizer_texts) if exotic else texts.captions(sizes.tokenizer_texts)
    # A fresh tokenizer before every timed call (built untimed): caches start cold, as on new data.
    setup = {
        "open_clip": lambda: (lambda tok=open_clip.tokenizer.SimpleTokenizer(): tok(strings)),
        "maskclip": lambda: (lambda tok=Tokenizer(): tok(strings)),
        "transformers": lambda: (lambda tok=c.transformers_tokenizer(): tok(
            strings, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]),
    }

    skipped = {}
    try:
        setup["transformers"]()()
    except (TypeError, ValueError) as err:  # the Rust tokenizer refuses e.g. lone surrogates
        skipped["transformers"] = f"{type(err).__name__}: {err}"
        del setup["transformers"]

    def run():
        results = alternate({k: None for k in setup}, sizes.repeats + 2, setup=setup)
        if "transformers" in results:
            results["transformers"].output = _pad_eot_ids(results["transformers"].output)
        return rows(results, len(strings), "open_clip", _rows_differing)

    kind = "exotic test corpus (~60% need ftfy)" if exotic else "caption-like, ~15% non-ASCII/HTML"
    return workload(f"tokenize {len(strings):,} strings ({kind}); diff = fraction of rows whose ids differ",
                    {"texts": len(strings), "kind": "exotic" if exotic else "captions", "skipped": skipped}, run)


# --- image tower -------------------------------------------------------------------------------

def _variants(c: Contenders, sizes: Sizes) -> dict:
    """maskclip's opt-in paths: bf16 autocast and torch.compile (compile time reported separately)."""
    if not sizes.variants:
        return {}
    return {"maskclip bf16 autocast": c.maskclip_variant(autocast=torch.bfloat16),
            "maskclip compile": c.maskclip_variant(compile=True)}


def image_calls(c: Contenders, batch: int) -> dict:
    """The three libraries' ``encode_image`` on the same random batch ``[batch, 3, 224, 224]``."""
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return {
        "open_clip": lambda: c.open_clip.encode_image(x),
        "maskclip": lambda: c.maskclip.encode_image(x),
        "transformers": lambda: hf_features(c.transformers.get_image_features(pixel_values=x)),
    }, x


def _with_autograd(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` recording autograd, as when a user forgets ``no_grad``/``inference_mode``."""
    with torch.inference_mode(False), torch.enable_grad():
        return fn(x.clone()).detach()


@torch.inference_mode()
def encode_image(c: Contenders, sizes: Sizes) -> dict:
    calls, x = image_calls(c, sizes.image_batch)
    if sizes.variants:
        calls["maskclip, autograd on"] = lambda: _with_autograd(c.maskclip.encode_image, x)
    compile_s = {}
    for name, model in _variants(c, sizes).items():
        calls[name] = lambda m=model: m.encode_image(x)
        start = time.perf_counter()
        calls[name]()  # compiles, for the compiled variant
        compile_s[name] = time.perf_counter() - start

    def run():
        return rows(alternate(calls, sizes.repeats), len(x), "open_clip")

    return workload(f"encode_image, ViT-B/16, 224 px, batch {len(x)}",
                    {"batch": len(x), "image_size": 224, "first_call_s": compile_s}, run)


@torch.inference_mode()
def dense(c: Contenders, sizes: Sizes, size: int = 448) -> dict:
    x = torch.randn(sizes.dense_batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = c.maskclip
    calls = {"encode_image": lambda: model.encode_image(x)}
    for method in maskclip.dense.METHODS:
        calls[f"dense_features {method}"] = lambda m=method: model.dense_features(x, method=m)

    def run():
        return rows(alternate(calls, sizes.repeats), len(x), None)

    return workload(f"maskclip dense_features vs encode_image, ViT-B/16, {size} px, batch {len(x)}",
                    {"batch": len(x), "image_size": size}, run)


# --- text tower --------------------------------------------------------------------------------

def _hf_text(c: Contenders, tokenizer, prompts) -> torch.Tensor:
    """transformers' idiom: tokenize with padding to the longest prompt, pass the attention mask."""
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    return hf_features(c.transformers.get_text_features(**batch))


def text_calls(c: Contenders, n_classes: int):
    """The three libraries' text encoders on ``n_classes`` x 80 prompts; also the prompts and ids."""
    import open_clip

    prompts = texts.prompts(n_classes)
    ids = open_clip.tokenize(prompts)
    hf_tok = c.transformers_tokenizer()
    return {
        "open_clip": lambda p=ids: c.open_clip.encode_text(p),
        "maskclip": lambda p=ids: c.maskclip.encode_text(p),
        "transformers": lambda p=prompts: _hf_text(c, hf_tok, p),
    }, prompts, ids


@torch.inference_mode()
def encode_text(c: Contenders, sizes: Sizes) -> dict:
    calls, prompts, ids = text_calls(c, sizes.text_classes)
    if sizes.variants:
        bf16 = c.maskclip_variant(autocast=torch.bfloat16)
        calls["maskclip bf16 autocast"] = lambda: bf16.encode_text(ids)
    # Warm up on a slice: one full open_clip call costs seconds per 100 prompts.
    warm = {"open_clip": lambda: calls["open_clip"](ids[:64]), "maskclip": lambda: calls["maskclip"](ids[:64]),
            "transformers": lambda: calls["transformers"](prompts[:64])}
    if sizes.variants:
        warm["maskclip bf16 autocast"] = lambda: bf16.encode_text(ids[:64])

    def run():
        alternate(warm, 0, warmup=1)
        return rows(alternate(calls, sizes.repeats, warmup=0), len(prompts), "open_clip")

    longest = int(ids.argmax(dim=1).max()) + 1
    return workload(f"encode_text, {len(prompts)} zero-shot prompts ({sizes.text_classes} classes x 80 templates, "
                    f"token ids given; longest {longest} of 77)", {"prompts": len(prompts), "longest": longest}, run)


# --- zero-shot classifier ----------------------------------------------------------------------

def _hf_classifier(c: Contenders, tokenizer, classnames, templates, per_batch: int = 10) -> torch.Tensor:
    """open_clip's ``build_zero_shot_classifier`` loop written for transformers (it has none)."""
    columns = []
    for i in range(0, len(classnames), per_batch):
        names = classnames[i:i + per_batch]
        emb = F.normalize(_hf_text(c, tokenizer, [t.replace("{}", n) for n in names for t in templates]), dim=-1)
        columns.append(F.normalize(emb.view(len(names), len(templates), -1).mean(dim=1), dim=-1).T)
    return torch.cat(columns, dim=1)


@torch.inference_mode()
def zero_shot(c: Contenders, sizes: Sizes) -> dict:
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    names, templates = texts.classnames(sizes.zero_shot_classes), texts.templates()
    oc_tok, hf_tok = open_clip.get_tokenizer("ViT-B-16"), c.transformers_tokenizer()
    # Each library's documented way: open_clip's helper (10 classes per batch by default),
    # maskclip's method, and the same loop as open_clip's for transformers.
    calls = {
        "open_clip": lambda n=names: build_zero_shot_classifier(c.open_clip, oc_tok, n, templates),
        "maskclip": lambda n=names: c.maskclip.zero_shot_classifier(n, templates),
        "transformers": lambda n=names: _hf_classifier(c, hf_tok, n, templates),
    }
    warm = {name: (lambda f=f: f(names[:1])) for name, f in calls.items()}

    def run():
        alternate(warm, 0, warmup=1)
        return rows(alternate(calls, sizes.zero_shot_repeats, warmup=0), len(names), "open_clip")

    return workload(f"zero-shot classifier build, {len(names)} classes x {len(templates)} templates "
                    "(tokenize + encode + average), items = classes",
                    {"classes": len(names), "templates": len(templates)}, run)


WORKLOADS = {
    "tokenizer": tokenizer,
    "tokenizer-exotic": lambda c, s: tokenizer(c, s, exotic=True),
    "encode_image": encode_image,
    "encode_text": encode_text,
    "zero_shot": zero_shot,
    "dense": dense,
}
