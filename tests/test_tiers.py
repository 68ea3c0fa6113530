"""The unit tier's guard (tests/tiers.py) catches what would make `pytest -m "not integration"` slow."""

import subprocess
import sys

import lightning.pytorch as pl
import pytest

from tests.helpers import lean_trainer
from tests.tiers import REFUSED, UnitTierViolation, raise_if_refused, starts_training


def expected_refusals(request) -> list[str]:
    """The refusals of this test so far, forgotten: these tests provoke them on purpose, and would fail after
    their call otherwise (`raise_if_refused`)."""
    refused = list(request.node.stash[REFUSED])
    request.node.stash[REFUSED].clear()
    return refused


def test_a_unit_test_cannot_build_a_trainer(request):
    with pytest.raises(UnitTierViolation, match="test_a_unit_test_cannot_build_a_trainer builds a lightning Trainer"):
        pl.Trainer(accelerator="cpu", logger=False)
    with pytest.raises(UnitTierViolation):
        lean_trainer()
    assert len(expected_refusals(request)) == 2


def test_a_unit_test_cannot_run_the_cli(request):
    from litsft.cli import cli_main

    with pytest.raises(UnitTierViolation, match=r"runs the CLI \(SFTCLI\)"):
        cli_main(["fit", "--help"])
    assert len(expected_refusals(request)) == 1


def test_a_unit_test_cannot_start_a_training_process(request):
    with pytest.raises(UnitTierViolation, match="starts the process"):
        subprocess.run([sys.executable, "train.py", "fit"], check=False)
    with pytest.raises(UnitTierViolation):
        subprocess.run(["sh", "-c", '"$PYTHON" train.py fit'], check=False)
    assert subprocess.run(["true"]).returncode == 0  # other programs run
    assert len(expected_refusals(request)) == 2


def test_what_counts_as_a_training_process():
    assert starts_training([sys.executable, "-c", "pass"]) and starts_training("python3 -m litsft.generate")
    assert starts_training(["bash", "-c", "python train.py fit"]) and starts_training([b"/usr/bin/python3.11"])
    assert not starts_training(["git", "status"]) and not starts_training(["chattr", "+i", "python-folder"])


@pytest.mark.integration
def test_an_integration_test_builds_one():
    trainer = lean_trainer(max_steps=1)
    assert isinstance(trainer, pl.Trainer) and trainer.max_steps == 1


@pytest.fixture(scope="module")
def trainer_of_a_wide_fixture():
    """A Trainer built by a module-scoped fixture, or the guard's refusal."""
    try:
        return pl.Trainer(accelerator="cpu", logger=False)
    except UnitTierViolation as refused:
        return refused


def test_a_wider_fixture_of_a_unit_test_is_guarded_too(request, trainer_of_a_wide_fixture):
    """Module and session fixtures are set up before any function-scoped one, inside the first test that asks for
    them: the guard is on from then (an autouse fixture would come too late)."""
    assert isinstance(trainer_of_a_wide_fixture, UnitTierViolation)
    assert len(expected_refusals(request)) == 1


def test_a_refusal_caught_by_the_code_under_test_still_fails_the_test(request):
    try:
        pl.Trainer(accelerator="cpu", logger=False)
    except Exception:  # noqa: BLE001 - as code under test might
        pass
    with pytest.raises(UnitTierViolation, match="builds a lightning Trainer"):
        raise_if_refused(request.node)  # what conftest's pytest_runtest_call does after this test's call
    assert len(expected_refusals(request)) == 1


@pytest.mark.parametrize(
    ("expression", "kept"),
    [
        ("not integration", ["unit"]),
        ("", ["unit"]),
        ("slow", ["unit", "slow"]),
        ("gpu or slow", ["unit", "slow", "gpu"]),
    ],
)
def test_slow_and_gpu_tests_run_only_when_the_expression_names_them(expression, kept):
    from types import SimpleNamespace

    from tests.tiers import deselect_unnamed

    def item(name):
        return SimpleNamespace(name=name, get_closest_marker=lambda marker: marker if marker == name else None)

    left_out = []
    config = SimpleNamespace(
        getoption=lambda name: expression, hook=SimpleNamespace(pytest_deselected=lambda items: left_out.extend(items))
    )
    items = [item("unit"), item("slow"), item("gpu")]
    deselect_unnamed(config, items)
    assert [i.name for i in items] == kept and len(left_out) == 3 - len(kept)
