"""The arrows run one way: data and model code never import each other, nor the run/callback/CLI layers above.

Layers, bottom up: the shared modules (`batch`, `errors`, `atomic_files`, `hub`, `prompts`, `lightning_compat`);
then `data/` and `model/`, side by side, each importing only itself and the shared modules; then `run/`,
`callbacks/` and the entry points (`cli`, `preview`, `generate`, ...), which may import anything below.
Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "litsft"
SHARED = {
    "litsft.batch",
    "litsft.errors",
    "litsft.atomic_files",
    "litsft.hub",
    "litsft.prompts",
    "litsft.lightning_compat",
}


def module_name(path: Path, src: Path = SRC) -> str:
    return ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")


def litsft_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `litsft...` import in the file, also inside functions; `from litsft.x import y`
    counts as `litsft.x.y` when `y` is a module, else as `litsft.x`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "litsft"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "litsft":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (SRC / sub.replace(".", "/")).with_suffix(".py").exists()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def allowed(importer: str, imported: str) -> bool:
    layer = importer.split(".")[1]
    if imported in SHARED or imported == "litsft":
        return True
    if importer in SHARED:  # the shared modules stand on their own
        return False
    if layer in ("data", "model"):
        return imported.startswith(f"litsft.{layer}.") or imported == f"litsft.{layer}"
    return True


def violations(layer_paths, src: Path = SRC) -> list[str]:
    bad = []
    for path in layer_paths:
        importer = module_name(path, src)
        for line, imported in litsft_imports(path):
            if not allowed(importer, imported):
                bad.append(f"{path.relative_to(src)}:{line} imports {imported}")
    return bad


@pytest.mark.parametrize("layer", ["data", "model"])
def test_a_layer_imports_only_itself_and_the_shared_modules(layer):
    paths = sorted((PACKAGE / layer).glob("*.py"))
    assert len(paths) > 5
    assert violations(paths) == []


def test_the_shared_modules_import_no_layer():
    paths = [SRC / (name.replace(".", "/") + ".py") for name in sorted(SHARED)]
    assert all(p.exists() for p in paths), [p for p in paths if not p.exists()]
    assert violations(paths) == []


def test_the_scanner_sees_imports_inside_functions_and_flags_a_wrong_arrow(tmp_path):
    # the checks above must be able to fail: a data module that imports model code, lazily, is caught
    probe = tmp_path / "litsft" / "data" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from litsft.model.loss import masked_ce_sum\n    from litsft.batch import Batch\n")
    assert violations([probe], src=tmp_path) == ["litsft/data/probe.py:2 imports litsft.model.loss"]
    assert "litsft.batch" in {name for _, name in litsft_imports(PACKAGE / "data" / "collate.py")}


def test_the_batch_contract_is_what_the_collators_build(tiny_tokenizer):
    """`litsft.batch.Batch` names every key the collators put in a batch (and nothing they never build)."""
    from litsft.batch import Batch
    from litsft.data.collate import SFTCollator
    from litsft.data.packing import PackedCollator

    rows = [
        {"input_ids": [5, 6, 7, 8], "prompt_len": 2, "step_tokens": 3},
        {"input_ids": [9, 10, 11], "prompt_len": 1, "step_tokens": 3},
    ]
    keys = set(SFTCollator(0)(rows)) | set(PackedCollator(0, 8)(rows))
    assert keys == set(Batch.__annotations__)
