"""encode_text running to the batch's longest end-of-text token vs padding to the full context.

ViT-B/16's text tower (random weights, fp32, CPU): ImageNet-style prompts (class names x templates).
Prints the median time of each path, the speed-up and the max abs difference of the outputs.

    python benchmarks/text_early_stop.py [--classes 20] [--templates 80] [--repeats 5]
"""
import argparse
import statistics
import time

import torch

import maskclip


def full_context(model, tokens):
    """The reference: all context positions computed (what OpenAI CLIP and open_clip do)."""
    t = model.text
    x = t.token_embedding(tokens) + t.positional_embedding
    x = t.transformer(x, causal=True)
    eot = x[torch.arange(x.shape[0]), tokens.argmax(-1)]
    return t.ln_final(eot) @ t.text_projection


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--templates", type=int, default=80)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    model = maskclip.MaskCLIP(maskclip.architecture_config("vit-b-16")).eval()
    names = maskclip.imagenet_classnames()[:: 1000 // args.classes][: args.classes]
    templates = maskclip.zero_shot.resolve_templates("openai_imagenet")[: args.templates]
    tokens = model.tokenize([t.format(c) for c in names for t in templates])
    with torch.inference_mode():
        full_context(model, tokens[:8]), model.encode_text(tokens[:8])  # warm-up
        t_full, ref = timed(lambda: full_context(model, tokens), args.repeats)
        t_fast, out = timed(lambda: model.encode_text(tokens), args.repeats)
    longest = int(tokens.argmax(-1).max()) + 1
    print(f"{tokens.shape[0]} prompts, longest {longest} of {tokens.shape[1]} tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"| path | median s | prompts/s |\n| --- | --- | --- |")
    print(f"| full context (77) | {t_full:.3f} | {tokens.shape[0] / t_full:.0f} |")
    print(f"| to longest EOT | {t_fast:.3f} | {tokens.shape[0] / t_fast:.0f} |")
    print(f"speed-up {t_full / t_fast:.2f}x, max abs diff {(out - ref).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
