"""Config files (`-c FILE`) checked before the CLI reads them: a mistake is named by file and line.

jsonargparse reports a YAML syntax error as `in "<unicode string>", line 3`, without the file's name (several
`-c` files are common), a tab in the indentation as "found character that cannot start any token", and it
accepts a list where a section of settings goes (`trainer:` followed by `- max_epochs: 3`), to fail later or
not at all. These checks run on the raw YAML, with its line numbers.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from litsft.errors import LitSFTError

# Top-level keys that hold a mapping of settings (a class's init args). optimizer / lr_scheduler may also be a
# class name.
SECTIONS = {"trainer", "model", "data", "export", "nonfinite", "interrupt", "throughput", "samples", "predictions"}
CLASS_SECTIONS = {"optimizer", "lr_scheduler"}
CONFIG_FLAGS = ("-c", "--config")


def config_files(args: list[str]) -> list[str]:
    """The values of every `-c FILE` / `--config FILE` / `--config=FILE` in `args`."""
    found = []
    for i, arg in enumerate(args):
        if arg in CONFIG_FLAGS and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return f"the value {node.value!r}"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def check_config_file(path: str | Path) -> None:
    """Raise LitSFTError naming `path` and the line of its first problem."""
    path = Path(path)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml", ".json"):
            raise LitSFTError(f"-c {path}: the config file does not exist (relative to {Path.cwd()}).")
        return  # jsonargparse also takes inline YAML after -c: it reports those itself
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LitSFTError(f"-c {path}: cannot read the config file ({err}).") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            raise LitSFTError(
                f"{path}, line {lineno}: a tab in the indentation. YAML indents with spaces only: replace it with "
                "spaces (two per level, as in configs/smoke.yaml)."
            )
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        started = err.context_mark
        context = f" ({err.context}" if err.context else ""
        if context and started is not None and (mark is None or started.line != mark.line):
            context += f" that starts at line {started.line + 1}, column {started.column + 1}"
        context += ")" if context else ""
        raise LitSFTError(f"{path}{where}: invalid YAML: {err.problem}{context}.") from err
    except yaml.YAMLError as err:
        raise LitSFTError(f"{path}: invalid YAML ({err}).") from err
    if root is None:
        return
    if not isinstance(root, yaml.MappingNode):
        raise LitSFTError(
            f"{path}, line {root.start_mark.line + 1}: a config file is a mapping of sections (trainer:, model:, "
            f"data:, ...), not {_kind(root)}."
        )
    for key, value in root.value:
        name = key.value
        allowed = isinstance(value, yaml.MappingNode) or _is_null(value)
        if name in CLASS_SECTIONS:
            allowed = allowed or isinstance(value, yaml.ScalarNode)
        if (name in SECTIONS or name in CLASS_SECTIONS) and not allowed:
            raise LitSFTError(
                f"{path}, line {value.start_mark.line + 1}: '{name}' holds settings as a mapping (`key: value` lines "
                f"indented under it, no '- '), not {_kind(value)}."
            )
    _check_init_args(root, path)


def _check_init_args(node: yaml.Node, path: Path) -> None:
    """`init_args` anywhere (loggers, callbacks, strategies) is a mapping."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "init_args" and not (isinstance(value, yaml.MappingNode) or _is_null(value)):
                raise LitSFTError(
                    f"{path}, line {value.start_mark.line + 1}: 'init_args' holds a class's settings as a mapping "
                    f"(`key: value` lines), not {_kind(value)}."
                )
            _check_init_args(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_init_args(item, path)


def check_config_files(args: list[str], defaults: list[str]) -> None:
    for path in [*defaults, *config_files(args)]:
        check_config_file(path)
