"""Markdown tables and the machine description of a benchmark run."""
import json
import os
import platform
from importlib import metadata


def machine() -> dict:
    """CPU model, cores, threads torch uses, and the versions that matter."""
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("torch", "open_clip_torch", "transformers", "tokenizers", "maskclip"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "versions": versions}


def _ratio(base, value):
    return f"{base / value:.2f}x" if base and value else ""


def _num(value, fmt):
    return "" if value is None else format(value, fmt)


def markdown(name: str, result: dict) -> str:
    """One workload as a markdown table.

    "vs open_clip" and "vs transformers" are speed-ups: their median time over this row's (above 1:
    faster). Without open_clip in the workload (dense features), "cost vs encode_image" is this
    row's median over encode_image's.
    """
    table = {row["contender"]: row for row in result["rows"]}
    oc, hf = table.get("open_clip"), table.get("transformers")
    enc = table.get("encode_image")
    head = ["contender", "median s", "min-max s", "items/s"]
    head += ["vs open_clip", "vs transformers"] if oc else ["cost vs encode_image"]
    head += ["peak MB", "max abs diff"]
    lines = [f"**{name}**: {result['title']} (load average {result['loadavg_before'][0]} before, "
             f"{result['loadavg_after'][0]} after)", "", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    for row in result["rows"]:
        cells = [row["contender"], f"{row['median_s']:.3f}", f"{row['min_s']:.3f}-{row['max_s']:.3f}",
                 f"{row['items_per_s']:.1f}"]
        if oc:
            cells += [_ratio(oc["median_s"], row["median_s"]), _ratio(hf["median_s"], row["median_s"]) if hf else ""]
        else:
            cells += [f"{row['median_s'] / enc['median_s']:.2f}x" if enc else ""]
        cells += [_num(row["peak_mb"], ".0f"), _num(row["diff"], ".2e")]
        lines.append("| " + " | ".join(cells) + " |")
    for contender, reason in result["params"].get("skipped", {}).items():
        lines += ["", f"{contender} not timed: {reason}"]
    first = result["params"].get("first_call_s")
    if first:
        lines += ["", "First call (includes compilation): " +
                  ", ".join(f"{k} {v:.1f} s" for k, v in first.items())]
    return "\n".join(lines)


def write_json(path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
