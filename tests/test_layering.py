"""The import layering of DESIGN.md: a module imports only from its own layer or lower ones.

0 config runtime errors files; 1 tokenizer model; 2 checkpoint data generate steps; 3 train evaluate
compress interop visualize; 4 finetune serve; 5 cli. Reading a checkpoint never needs training: `checkpoint`
imports only layers 0-1, and the commands that read models (generate, checkpoint, evaluate, serve,
interop) never import `train`. `steps` (the book's teaching modules) imports only
`model.functional`, `config` and `errors`, and nothing in the package imports `steps`.
"""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "scratchllm"

LAYERS = {
    "__init__": 0, "config": 0, "runtime": 0, "errors": 0, "files": 0,
    "tokenizer": 1, "model": 1,
    "checkpoint": 2, "data": 2, "generate": 2, "steps": 2,
    "train": 3, "evaluate": 3, "compress": 3, "interop": 3, "visualize": 3,
    "finetune": 4, "serve": 4,
    "cli": 5, "__main__": 5,  # `python -m scratchllm` is the command line
}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """Every scratchllm module that `path` imports (absolute or relative)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(SRC.parent).with_suffix("")
    pkg = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("scratchllm")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("scratchllm"):
                out.append(mod)
                out += [f"{mod}.{a.name}" for a in node.names if mod in ("scratchllm", "scratchllm.model")]
    # importlib.import_module("scratchllm.x") strings count too
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("scratchllm."):
            out.append(node.value.split(":")[0])
    return out


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        yield ".".join(rel.parts), path


def test_every_package_has_a_layer():
    for name, _ in _modules():
        assert _top(name) in LAYERS, f"{name}: add its package to the layer table in DESIGN.md and here"


def test_imports_flow_downwards():
    bad = []
    for name, path in _modules():
        here = LAYERS[_top(name)]
        for imp in _imports(path):
            top = _top(imp)
            if top not in LAYERS:
                continue
            if LAYERS[top] > here:
                bad.append(f"{name} (layer {here}) imports {imp} (layer {LAYERS[top]})")
    assert not bad, "\n".join(bad)


def test_steps_use_only_the_functional_core():
    bad = []
    for name, path in _modules():
        if _top(name) != "steps":
            continue
        for imp in _imports(path):
            top = _top(imp)
            ok = top in ("steps", "config", "errors") or imp.startswith("scratchllm.model.functional")
            if imp == "scratchllm.model":
                ok = False
            if not ok:
                bad.append(f"{name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_nothing_in_the_package_imports_steps():
    bad = [f"{name} imports {imp}" for name, path in _modules() if _top(name) != "steps"
           for imp in _imports(path) if _top(imp) == "steps"]
    assert not bad, "\n".join(bad)


def test_model_never_imports_training_or_generation():
    bad = [f"{name} imports {imp}" for name, path in _modules() if _top(name) == "model"
           for imp in _imports(path) if _top(imp) in ("train", "generate", "cli", "data")]
    assert not bad, "\n".join(bad)


def test_checkpoint_reading_never_imports_training():
    readers = ("generate", "checkpoint", "evaluate", "serve", "interop")
    bad = [f"{name} imports {imp}" for name, path in _modules() if _top(name) in readers
           for imp in _imports(path) if _top(imp) == "train"]
    assert not bad, "\n".join(bad)


def test_checkpoint_uses_only_the_layers_below():
    allowed = ("checkpoint", "errors", "files", "config", "runtime", "tokenizer", "model")
    names = [name for name, _ in _modules() if _top(name) == "checkpoint"]
    assert "scratchllm.checkpoint.load" in names  # the package exists and is scanned
    bad = [f"{name} imports {imp}" for name, path in _modules() if _top(name) == "checkpoint"
           for imp in _imports(path) if _top(imp) not in allowed]
    assert not bad, "\n".join(bad)


def test_cli_help_does_not_import_torch():
    code = ("import sys, scratchllm.cli as c; c.build_parser(); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr
