"""The layers of docs/architecture.md hold: every import in src/traffic_moe_hf looks down (capture → data →
shaping → model → training → CLI), the modeling files import only their siblings, and the data layer
imports neither torch nor the model code.

Parsed with ``ast``, so imports inside functions (the lazy ones) count as much as those at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "traffic_moe_hf"

#: layers from the bottom up; a module may import its own layer and those listed before it
LAYERS = ["base", "tokenizer", "capture", "data", "shaping", "model", "training", "aliases", "cli"]

#: module (dotted, under traffic_moe_hf) or package prefix -> layer; the longest matching entry wins
PLACES = {
    # leaves: no project imports, usable by every layer
    "errors": "base", "argtypes": "base", "progress": "base", "atomic": "base", "checkpoints": "base",
    "threads": "base", "safe_loading": "base", "options": "base",
    # the tokenizer: a model file, but torch-free at import and what the data layer tokenizes with
    "tokenization_traffic_moe": "tokenizer",
    # a packet off the wire: read, decode (header offsets), anonymise
    "data.reader": "capture", "data.decode": "capture", "data.headers": "capture", "data.anonymize": "capture",
    # packets -> flows -> samples -> a prepared dataset, and reading one back
    "data": "data",
    # transforms of prepared flows (no model)
    "shaping": "shaping",
    # the model files (remote code) and the package root, whose names are the model's
    "": "model", "configuration_traffic_moe": "model", "modeling_traffic_moe": "model", "moe_dispatch": "model",
    "moe_triton": "model", "hub": "model",
    # recipes that train, evaluate, export and apply models
    "recipes": "training", "export": "training",
    # old import paths (robustness.* -> shaping / recipes); nothing in the package may import them
    "robustness": "aliases",
    # commands
    "cli": "cli", "demo": "cli", "bench": "cli",
}

#: shipped beside a checkpoint as remote code: they import only each other (+ the libraries below)
MODEL_FILES = {"configuration_traffic_moe", "modeling_traffic_moe", "tokenization_traffic_moe", "moe_dispatch",
               "moe_triton", "hub"}
MODEL_FILE_LIBRARIES = {"torch", "transformers", "tokenizers", "numpy", "safetensors", "huggingface_hub", "triton"}


def project_modules() -> dict[str, Path]:
    """Dotted name under ``traffic_moe_hf`` ("" for the package root, "data" for data/__init__.py) -> file.
    The ``tokenizer/`` folder beside the package (a saved copy) is not part of it."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = project_modules()


def layer_of(name: str) -> str | None:
    best = None
    for prefix, layer in PLACES.items():
        if name == prefix or (prefix and name.startswith(prefix + ".")):  # "": the package root only
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def imports_of(name: str, path: Path):
    """(line, imported project module or None, top-level library or None) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "traffic_moe_hf" or alias.name.startswith("traffic_moe_hf."):
                    yield node.lineno, alias.name.removeprefix("traffic_moe_hf").lstrip("."), None
                else:
                    yield node.lineno, None, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if not (mod == "traffic_moe_hf" or mod.startswith("traffic_moe_hf.")):
                    yield node.lineno, None, mod.split(".")[0]
                    continue
                base = mod.removeprefix("traffic_moe_hf").lstrip(".")
            else:
                here = name.split(".") if name else []
                package = here if is_package else here[:-1]
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the package")
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([node.module] if node.module else [])])
            for alias in node.names:  # `from . import open_set` imports a module; `from .x import f` imports x
                sub = f"{base}.{alias.name}" if base else alias.name
                yield node.lineno, sub if sub in MODULES else base, None


def test_every_module_has_a_layer():
    unplaced = [n for n in MODULES if layer_of(n) is None]
    assert not unplaced, f"place these modules in a layer (tests/test_architecture.py PLACES, docs/architecture.md): {unplaced}"


def test_imports_look_down_only():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = []
    for name, path in MODULES.items():
        source = layer_of(name)
        for line, target, _lib in imports_of(name, path):
            if target is None:
                continue
            if layer_of(target) is None or rank[layer_of(target)] > rank[source]:
                upward.append(f"{path.relative_to(SRC)}:{line} ({source}) imports traffic_moe_hf.{target} "
                              f"({layer_of(target)})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_modeling_files_import_only_siblings():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for name in MODEL_FILES & set(MODULES):
        path = MODULES[name]
        for line, target, lib in imports_of(name, path):
            if target is not None and target not in MODEL_FILES:
                bad.append(f"{path.name}:{line} imports traffic_moe_hf.{target or '(package root)'}")
            # a sibling imported as a top-level module is the fallback for a file loaded outside the package
            if lib is not None and lib not in stdlib | MODEL_FILE_LIBRARIES | MODEL_FILES | {"__future__"}:
                bad.append(f"{path.name}:{line} imports {lib}")
    assert not bad, "remote-code files import only their siblings (+ torch/transformers/tokenizers/numpy):\n" + "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above would fail on the imports this layout once had (recipes <-> robustness, data/samples
    -> the package root): the resolver maps them to the layers they reach."""
    assert layer_of("data.samples") == "data" and layer_of("") == "model"
    assert layer_of("shaping.attacks") == "shaping" and layer_of("recipes.robustness") == "training"
    fake = tmp_path / "samples.py"
    fake.write_text("def f():\n    from traffic_moe_hf import TrafficTokenizer\n    from ..recipes.common import x\n")
    found = [(t, layer_of(t)) for _, t, _ in imports_of("data.samples", fake) if t is not None]
    assert found == [("", "model"), ("recipes.common", "training")]


@pytest.mark.parametrize("module", ["traffic_moe_hf.data.prepare", "traffic_moe_hf.data.prepared",
                                    "traffic_moe_hf.shaping.attacks", "traffic_moe_hf.shaping.augment"])
def test_data_and_shaping_load_neither_torch_nor_the_model(module):
    code = (f"import sys, {module}\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('traffic_moe_hf.modeling', "
            "'traffic_moe_hf.moe_', 'traffic_moe_hf.recipes')))\n"
            "print(loaded)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_importing_the_package_still_registers_the_auto_classes():
    """The package root is lazy (the data layer imports it first), yet ``import traffic_moe_hf`` is all a user
    needs before the Auto factories know Traffic-MoE: in either order of the imports."""
    code = ("import sys\n"
            "{first}\n"
            "from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, "
            "AutoTokenizer\n"
            "config = AutoConfig.for_model('traffic_moe')\n"
            "from traffic_moe_hf import (TrafficMoeForMaskedLM, TrafficMoeForSequenceClassification, TrafficMoeModel,\n"
            "                            TrafficTokenizer)\n"
            "assert type(config).__name__ == 'TrafficMoeConfig'\n"
            "tiny = type(config).from_preset('tiny')\n"
            "assert type(AutoModel.from_config(tiny)) is TrafficMoeModel\n"
            "assert type(AutoModelForMaskedLM.from_config(tiny)) is TrafficMoeForMaskedLM\n"
            "assert type(AutoModelForSequenceClassification.from_config(tiny)) is TrafficMoeForSequenceClassification\n"
            "from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING\n"
            "assert TOKENIZER_MAPPING[type(config)] is TrafficTokenizer\n"
            "print('ok')\n")
    for first in ("import traffic_moe_hf", "import transformers.models.auto; import traffic_moe_hf",
                  "import traffic_moe_hf.data.prepare; import traffic_moe_hf.modeling_traffic_moe"):
        out = subprocess.run([sys.executable, "-c", code.format(first=first)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (first, out.stderr[-2000:])
