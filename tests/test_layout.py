"""The package's layers: imports run one way (resources <- core <- datasets <- {train, eval} <- cli)."""
import ast
import json
import os
import pathlib
import subprocess
import sys

import maskclip

PACKAGE = pathlib.Path(maskclip.__file__).parent
# Each layer may import only from the layers listed before it (and from itself). Training and
# evaluation sit side by side; the training loop's periodic evaluation calls maskclip.eval, so that
# one direction is allowed and eval never imports train.
LAYERS = ("resources", "core", "datasets", "eval", "train", "cli")


def _module_name(path: pathlib.Path) -> str:
    parts = ["maskclip", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known) -> set:
    """maskclip modules that ``name`` imports anywhere in its source (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("maskclip") and target != name:
                found.add(target)
    return found


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top == "resources":
        return 0
    if top == "datasets":
        return 2
    if top in ("eval", "embed"):  # collection embedding sits beside evaluation, above the datasets
        return 3
    if top == "train":
        return 4
    if top == "cli":
        return 5
    return 1


def test_package_imports_have_no_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_run_one_way_resources_core_datasets_eval_train_cli():
    graph = _graph()
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "maskclip":  # the package's public names are core
                target = "maskclip.hub"
            own, other = _layer(module), _layer(target)
            if other > own:
                wrong.append(f"{module} ({LAYERS[own]}) imports {target} ({LAYERS[other]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_resources_package_imports_nothing_from_maskclip():
    assert _graph()["maskclip.resources"] == set()


def test_loading_the_bundled_model_and_encoding_text_imports_no_dataset_training_or_eval_code(tmp_path):
    code = ("import json, sys, maskclip\n"
            "from PIL import Image\n"
            "m = maskclip.load('tiny-shapes')\n"
            "m.encode_text('a red circle')\n"
            "m.classify(Image.new('RGB', (40, 30)), ['a red circle', 'a blue square'])\n"
            "print(json.dumps(sorted(k for k in sys.modules if k.startswith('maskclip'))))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "maskclip.hub" in loaded and "maskclip.tokenizer" in loaded
    heavy = [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in ("datasets", "train", "eval", "cli")]
    assert heavy == []
