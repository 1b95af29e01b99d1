"""maskclip against open_clip and transformers at the same weights, side by side on this machine.

    python benchmarks/run.py                 # every workload (10-12 min on 2 cores; open_clip's
                                             # 100-class classifier build alone takes 6-8 min)
    python benchmarks/run.py --quick         # smaller sizes, one repeat (~75 s)
    python benchmarks/run.py --only encode_image encode_text

Builds one random-weight ViT-B/16 CLIP in the three libraries (the same tensors, converted),
checks that their features agree, then times each workload with the contenders alternating
within every repeat. Prints markdown tables and writes them with every timing to
``benchmarks/results/<mode>-<time>.json``. Needs the bench extra: ``pip install -e ".[bench]"``.
"""
import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import contenders  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402
from timing import loadavg  # noqa: E402

AGREEMENT_TOL = 1e-5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat (about two minutes)")
    p.add_argument("--only", nargs="+", choices=list(workloads.WORKLOADS), metavar="WORKLOAD",
                   help=f"run only these workloads: {', '.join(workloads.WORKLOADS)}")
    p.add_argument("--repeats", type=int, help="timed repeats per workload (default: 3, quick: 1)")
    p.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/<mode>-<time>.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    sizes = workloads.QUICK if args.quick else workloads.FULL
    if args.repeats:
        sizes = workloads.Sizes(**{**sizes.__dict__, "repeats": args.repeats})
    mode = "quick" if args.quick else "full"
    started = time.time()
    info = report.machine()
    print(f"{info['cpu']}, {info['cores']} cores, torch {info['versions']['torch']} ({info['torch_threads']} threads), "
          f"open_clip {info['versions']['open_clip_torch']}, transformers {info['versions']['transformers']}; "
          f"load average {loadavg()}", flush=True)
    c = contenders.build()
    agreement = contenders.check_agreement(c, 224)
    print("features vs open_clip (max abs diff): " + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))
    if max(agreement.values()) > AGREEMENT_TOL:
        raise SystemExit(f"the three libraries disagree by more than {AGREEMENT_TOL}: {agreement}")
    results = {}
    for name in args.only or list(workloads.WORKLOADS):
        results[name] = workloads.WORKLOADS[name](c, sizes)
        print("\n" + report.markdown(name, results[name]), flush=True)
    data = {"mode": mode, "sizes": sizes.__dict__, "machine": info, "agreement": agreement,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "duration_s": time.time() - started, "loadavg_end": loadavg(), "workloads": results}
    out = args.out or HERE / "results" / f"{mode}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    report.write_json(out, data)
    print(f"\n{time.time() - started:.0f} s; written {out}")
    return data


if __name__ == "__main__":
    main()
