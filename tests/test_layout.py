"""The package's shape, checked: callbacks talk to other objects through their public members only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "litsft"
OWN = {"self", "cls"}
ATTRIBUTE_FUNCTIONS = {"getattr", "hasattr", "setattr", "delattr"}
# torch's fused multi-tensor ops: torch's API in practice, whatever their underscore
ALLOWED_PRIVATE = ("torch._foreach_",)
REACHED_INTO = {"pl_module", "datamodule", "module"}  # the LightningModule and the datamodule, by their usual names


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "<expr>"


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def reach_ins(source: str, where: str) -> list[str]:
    """`where:line: what` for each private attribute of another object, and each `getattr(module or datamodule,
    "name", default)`, in the Python `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = dotted(node.value)
            if owner not in OWN and not f"{owner}.{node.attr}".startswith(ALLOWED_PRIVATE):
                found.append((node.lineno, f"{owner}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, f"imports {a.name}") for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS:
            if len(node.args) < 2 or dotted(node.args[0]) in OWN:
                continue
            name = node.args[1]
            text = f"{node.func.id}({dotted(node.args[0])}, {ast.unparse(name)}, ...)"
            if isinstance(name, ast.Constant) and str(name.value).startswith("_"):
                found.append((node.lineno, text))
            elif node.func.id == "getattr" and len(node.args) == 3 and names_in(node.args[0]) & REACHED_INTO:
                found.append((node.lineno, text + " (use the member itself)"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def test_no_callback_reaches_into_another_object():
    """No callback reads an underscore attribute of another object, or reaches into the module or datamodule with
    `getattr(obj, "name", default)`: they use named public members (`SFTModule.step_loss`, `gather_head`,
    `AlpacaDataModule.sample_prompts`, ...) and `litsft.lightning_compat` for Lightning's private attributes."""
    files = sorted((SRC / "callbacks").glob("*.py"))
    assert len(files) > 5
    found = [line for path in files for line in reach_ins(path.read_text(), str(path.relative_to(SRC.parent)))]
    assert not found, "reach-ins into other objects:\n" + "\n".join(found)


def test_lightnings_private_loop_and_cli_steps_are_used_only_in_the_compat_module():
    private = re.compile(
        r"trainer\.fit_loop|\b_parse_ckpt_path|\._device_mesh|\._signal_connector|\._batches_that_stepped"
    )
    found = [
        f"{path.relative_to(SRC.parent)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "lightning_compat.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if private.search(line)
    ]
    assert not found, "use litsft.lightning_compat instead:\n" + "\n".join(found)


def test_the_scan_finds_reach_ins():
    source = (
        "def hook(trainer, pl_module, self):\n"
        "    trainer._signal_connector.received_sigterm = True\n"
        "    getattr(pl_module, '_gather_head', False)\n"
        "    getattr(trainer.datamodule, 'stop_token_ids', None)\n"
        "    self._mine, torch._foreach_copy_, hasattr(self, '_counts'), getattr(trainer, 'litsft_stop', None)\n"
        "from lightning.fabric.utilities.cloud_io import _is_local_file_protocol\n"
    )
    assert reach_ins(source, "callbacks/x.py") == [
        "callbacks/x.py:2: trainer._signal_connector",
        "callbacks/x.py:3: getattr(pl_module, '_gather_head', ...)",
        "callbacks/x.py:4: getattr(trainer.datamodule, 'stop_token_ids', ...) (use the member itself)",
        "callbacks/x.py:6: imports _is_local_file_protocol",
    ]
