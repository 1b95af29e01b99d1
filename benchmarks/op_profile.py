"""Where the time goes: torch.profiler's operator table for each library on one workload.

    python benchmarks/op_profile.py encode_image [--batch 16] [--rows 12]
    python benchmarks/op_profile.py encode_text [--classes 3]

Runs each contender once to warm up, then once under ``torch.profiler`` (CPU activity), and prints
the operators with the most self time and their share of the total. Shares hold up better than
absolute times on a machine other processes share.
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contenders  # noqa: E402
import workloads  # noqa: E402


def top_ops(fn, rows: int) -> str:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"total {total / 1e6:.2f} s", "| op | calls | self s | share |", "| --- | --- | --- | --- |"]
    for e in events[:rows]:
        lines.append(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | {e.self_cpu_time_total / total:.1%} |")
    return "\n".join(lines)


@torch.inference_mode()
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=["encode_image", "encode_text"])
    p.add_argument("--batch", type=int, default=16, help="encode_image batch")
    p.add_argument("--classes", type=int, default=3, help="encode_text: classes x 80 templates")
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args(argv)
    c = contenders.build()
    if args.workload == "encode_image":
        calls, _ = workloads.image_calls(c, args.batch)
    else:
        calls = workloads.text_calls(c, args.classes)[0]
    for name, fn in calls.items():
        fn()
        print(f"\n### {name}: {args.workload}\n\n{top_ops(fn, args.rows)}", flush=True)


if __name__ == "__main__":
    main()
