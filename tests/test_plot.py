import os

import pytest

from litsft.plot import find_metrics, main, read_series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_plot_writes_a_png_from_a_real_smoke_runs_csv(smoke_wandb_run, tmp_path, capsys):
    _, run = smoke_wandb_run
    out = main([str(run), "--out", str(tmp_path / "curves.png")])
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    series = read_series(find_metrics(run), ("train/loss", "val/loss", "lr"))
    assert len(series["val/loss"][0]) >= 4 and len(series["train/loss"][0]) >= 10 and series["lr"]
    assert "litsft: plotted" in capsys.readouterr().out


def write_csv(path, steps, start_loss=5.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,lr,step,train/loss,val/loss"] + [f"0,0.001,{s},{start_loss - 0.01 * s},," for s in steps]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_resumed_run_is_drawn_whole_and_a_new_run_alone(tmp_path):
    first = write_csv(tmp_path / "csv/version_0/metrics.csv", range(0, 11))
    resumed = write_csv(tmp_path / "csv/version_1/metrics.csv", range(10, 21))
    os.utime(first, (1, 1))
    os.utime(resumed, (2, 2))
    assert find_metrics(tmp_path) == [first, resumed]
    steps, _ = read_series([first, resumed], ("train/loss",))["train/loss"]
    assert steps == list(range(0, 21))  # step 10 once: the resumed version wins where they overlap
    fresh = write_csv(tmp_path / "csv/version_2/metrics.csv", range(0, 5))
    os.utime(fresh, (3, 3))
    assert find_metrics(tmp_path) == [fresh]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d, "no metrics.csv under"),
        (lambda d: write_csv(d / "m/metrics.csv", []), "no train/loss or val/loss values"),
    ],
)
def test_bad_run_dir_is_one_clear_message(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_:
        main([str(make(tmp_path)), "--out", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("litsft: error:") and message in err
    assert not (tmp_path / "x.png").exists()
