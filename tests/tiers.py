"""The suite's tiers and the guard that keeps the unit tier fast.

- `integration`: runs the CLI or a Trainer end to end: `cli_main` and the other LightningCLI commands (preview),
  a `Trainer`, or a training subprocess. Marked explicitly, with `pytestmark = pytest.mark.integration` in a
  module or `@pytest.mark.integration` on a test.
- unit: every other test. `pytest -m "not integration"` runs these alone, the edit loop. While a unit test runs
  (its fixtures included), `unit_tier_guard` makes building a `LightningCLI` or a `Trainer`, or starting a Python
  or `train.py` process, raise `UnitTierViolation`, and `raise_if_refused` fails the test even if the code under
  test caught that: a test that needs one must say so with the mark.
- `slow` and `gpu`: left out of the default run (pyproject's addopts) and of any run whose `-m` expression does
  not name them (`deselect_unnamed`: `-m "not integration"` replaces addopts' `-m`, and would otherwise run the
  two slow compile tests); `pytest -m slow` runs the slow ones.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION = "integration"
ONLY_WHEN_NAMED = ("slow", "gpu")


REFUSED = pytest.StashKey[list[str]]()  # what the guard refused during a test


class UnitTierViolation(Exception):  # noqa: N818 - named for what happened
    """A test without the `integration` mark built a Trainer or started a training process."""


def is_integration(item: pytest.Item) -> bool:
    return item.get_closest_marker(INTEGRATION) is not None


def starts_training(args) -> bool:
    """Whether `subprocess.Popen(args)` would start a Python interpreter (a child's imports alone cost seconds, and
    what it runs is out of the in-process guard's sight) or anything that mentions train.py (`sh -c` scripts)."""
    argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
    words = [os.fsdecode(a) if isinstance(a, bytes | os.PathLike) else str(a) for a in argv]
    if any("train.py" in word for word in words):
        return True
    program = words[0].split()[0] if words and words[0].strip() else ""
    return bool(program) and (program == sys.executable or Path(program).name.startswith("python"))


@contextlib.contextmanager
def unit_tier_guard(item: pytest.Item) -> Iterator[None]:
    """While it is open, `LightningCLI(...)`, `Trainer(...)` and `subprocess.Popen` of a training command raise
    `UnitTierViolation`."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningCLI

    refused = item.stash.setdefault(REFUSED, [])

    def refuse(what: str):
        refused.append(
            f"{item.nodeid} {what} but is not marked integration: add `@pytest.mark.integration` (or `pytestmark = "
            "pytest.mark.integration` to its module), or test the code without a Trainer (see tests/tiers.py)"
        )
        raise UnitTierViolation(refused[-1])

    @functools.wraps(Trainer.__init__)  # keeps the signature that parsers read
    def trainer_init(self, *args, **kwargs):
        refuse("builds a lightning Trainer")

    @functools.wraps(LightningCLI.__init__)
    def cli_init(self, *args, **kwargs):
        refuse(f"runs the CLI ({type(self).__name__})")

    popen_init = subprocess.Popen.__init__

    @functools.wraps(popen_init)
    def guarded_popen_init(self, args, *rest, **kwargs):
        if starts_training(args):
            refuse(f"starts the process {args!r:.200}")
        popen_init(self, args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "__init__", trainer_init)
        patch.setattr(LightningCLI, "__init__", cli_init)
        patch.setattr(subprocess.Popen, "__init__", guarded_popen_init)
        yield


def raise_if_refused(item: pytest.Item) -> None:
    """After a unit test's call passed: fail it if the guard refused something that the code under test caught."""
    if item.stash.get(REFUSED, None):
        raise UnitTierViolation(item.stash[REFUSED][0])


def deselect_unnamed(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out `slow` and `gpu` tests unless the `-m` expression names the marker."""
    expression = config.getoption("markexpr") or ""
    unnamed = [m for m in ONLY_WHEN_NAMED if not re.search(rf"\b{m}\b", expression)]
    left_out = [item for item in items if any(item.get_closest_marker(m) for m in unnamed)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]
