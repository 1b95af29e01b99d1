"""The README's commands for the published segmentation table parse and run (tiny folders, tiny models)."""
import functools
import json
import re
import shlex
from pathlib import Path

import pytest

from maskclip import dense
from maskclip.cli import build_parser, main
from maskclip.datasets.segmentation_benchmarks import BENCHMARKS, benchmark_roots

from test_cli_segment import _tiny_proxy
from test_segmentation_benchmarks import SMALL, TREES, make_tree

README = Path(__file__).resolve().parents[1] / "README.md"
RUN = ("voc20", "cityscapes")  # two of the eight are scored (each classifier takes seconds); all eight are found


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("#### The published table")
    return text[start:text.index("\n#", start + 1)]


def _commands():
    return [shlex.split(line)[1:] for line in _section().splitlines() if line.startswith("maskclip eval segmentation")]


def _python_block() -> str:
    return re.search(r"```python\n(.*?)```", _section(), re.S).group(1)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """Every benchmark's tiny folder under ``tmp_path/data``; the working directory is ``tmp_path``."""
    for name in BENCHMARKS:
        folder, ids = TREES[name]
        make_tree(name, tmp_path / "data" / folder, ids[:1], values=(1, 2))
    monkeypatch.chdir(tmp_path)
    return Path("data")


def test_readme_gives_one_command_per_method_on_all_eight_benchmarks():
    commands = _commands()
    methods = {c[c.index("--method") + 1] for c in commands}
    assert methods == set(dense.METHODS) - {"vanilla"}
    assert any("--refine" in c and c[c.index("--refine") + 1] == "pamr" for c in commands)
    for argv in commands:
        args = build_parser().parse_args(argv)
        assert (args.benchmark, args.data_root, args.model) == ("all", "data", "openai-vitb16")
    assert 'method="proxyclip"' in _python_block()


def test_readme_commands_find_the_eight_folders_and_run(data_root, monkeypatch, capsys):
    from maskclip.eval import segmentation_benchmark as sb

    assert set(benchmark_roots(data_root, BENCHMARKS)) == set(BENCHMARKS)
    monkeypatch.setattr(sb, "BENCHMARKS", RUN)
    for argv in _commands():
        argv = ["tiny-shapes" if a == "openai-vitb16" else a for a in argv] + SMALL + ["--limit", "1"]
        assert main(argv) == 0, argv
        out = json.loads(Path(argv[argv.index("--out") + 1]).read_text())
        assert list(out["miou"]) == list(RUN) and out["method"] == argv[argv.index("--method") + 1]
    assert "average" in capsys.readouterr().out


def test_readme_proxyclip_snippet_runs(data_root, monkeypatch, capsys):
    from maskclip import proxy
    from maskclip.eval import segmentation_benchmark as sb

    monkeypatch.setattr(sb, "BENCHMARKS", RUN)
    monkeypatch.setattr(sb, "all_benchmarks", functools.partial(sb.all_benchmarks, short_side=32, window=32,
                                                                stride=16, limit=1, progress=False))
    built = []
    tiny = _tiny_proxy()
    monkeypatch.setattr(proxy.Proxy, "from_timm", classmethod(lambda cls, name: built.append(name) or tiny))
    exec(_python_block().replace("openai-vitb16", "tiny-shapes"), {})
    assert built == [proxy.DEFAULT_PROXY] and 0 <= float(capsys.readouterr().out) <= 1
