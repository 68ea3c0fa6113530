import json
import re
import shutil
import socket
import threading
import time
import warnings
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from jsonargparse import Namespace

from litsft.cli import cli_main
from litsft.run.wandb_setup import REDACTED, offline_reason, prepare_loggers, redact, run_id_from_checkpoint
from tests.helpers import FAKE_WANDB_KEY, LEAN_ARGS, latest_table, tiny_model_args


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No WANDB_API_KEY and an empty home: W&B has no credentials."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))


def test_offline_reason_no_login_no_network_and_ok(no_login, monkeypatch):
    assert "no W&B login" in offline_reason()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    with socket.socket() as closed:  # a port nobody listens on: connection refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert "cannot be reached" in offline_reason(timeout=2.0)
    with fake_wandb_server(200, {"data": {"viewer": {"id": "me"}}}) as url:  # knows the key
        monkeypatch.setenv("WANDB_BASE_URL", url)
        assert offline_reason(timeout=2.0) is None


@contextmanager
def fake_wandb_server(status: int | None, answer: dict | None = None):
    """A W&B server on 127.0.0.1: answers every request with `status` and `answer`, or (status None) accepts
    connections and never answers."""
    if status is None:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            yield f"http://127.0.0.1:{server.getsockname()[1]}"
        return

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(answer or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


SERVERS = {
    "silent": ((None, None), r"accepted a connection but did not answer within 1 s"),
    "rejected-key": ((401, {"errors": [{"message": "user is not logged in"}]}), r"rejected the API key \(HTTP 401\)"),
    "unknown-key": ((200, {"data": {"viewer": None}}), r"does not know the API key"),
    "server-error": ((502, {}), r"answered HTTP 502"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", list(SERVERS))
def test_a_silent_server_or_a_rejected_key_is_found_within_the_bound(no_login, monkeypatch, server):
    (status, answer), reason = SERVERS[server]
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    with fake_wandb_server(status, answer) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        start = time.monotonic()
        found = offline_reason(timeout=1.0)
        assert time.monotonic() - start < 3.0  # connect + answer, each bounded by the timeout
    assert found is not None and re.search(reason, found), found


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", ["silent", "rejected-key"])
def test_a_run_with_a_silent_or_refusing_wandb_server_trains_offline_with_one_warning(
    no_login, monkeypatch, in_repo, tmp_path, alpaca_file, rank_zero_log, server
):
    """W&B online by default (no WANDB_MODE), a key, and a server on 127.0.0.1 that never answers or refuses
    the key: before, a ~2-minute hang, then a CommError traceback; now offline within the bound."""
    (status, answer), reason = SERVERS[server]
    monkeypatch.setenv("WANDB_API_KEY", FAKE_WANDB_KEY)
    monkeypatch.setenv("LITSFT_WANDB_TIMEOUT", "1")
    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "2", *LEAN_ARGS)
    args[args.index("--trainer.logger") + 1] = json.dumps(
        [{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "litsft"}}]
    )
    with fake_wandb_server(status, answer) as url:
        monkeypatch.setenv("WANDB_BASE_URL", url)
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cli = cli_main(["fit", *args])
        elapsed = time.monotonic() - start
    ours = [str(w.message) for w in caught if str(w.message).startswith("W&B:")]
    assert len(ours) == 1 and re.search(reason, ours[0]) and "Logging offline" in ours[0], ours
    assert cli.trainer.global_step == 2 and elapsed < 60
    assert "at most 2 s; LITSFT_WANDB_TIMEOUT" in rank_zero_log.text  # the run says how long it waits
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


def logger_config(root, **wandb_args):
    wandb = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(
        save_dir=".", offline=False, id=None, version=None, mode=None, **wandb_args))  # fmt: skip
    csv = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir="csvdir"))
    return Namespace(trainer=Namespace(default_root_dir=str(root), logger=[wandb, csv]), ckpt_path=None)


def test_without_login_wandb_falls_back_to_offline_with_a_warning(no_login, tmp_path):
    config = logger_config(tmp_path / "run")
    with pytest.warns(UserWarning, match=r"W&B: no W&B login .* Logging offline to .*wandb sync"):
        prepare_loggers(config, "fit")
    wandb, csv = config.trainer.logger
    assert wandb.init_args.offline is True
    assert wandb.init_args.save_dir == str(tmp_path / "run")  # follows default_root_dir
    assert csv.init_args.save_dir == "csvdir"  # an explicit save_dir is kept


def test_offline_mode_needs_no_check(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = logger_config(tmp_path)
    prepare_loggers(config, "fit", check_online=lambda: pytest.fail("checked the network in offline mode"))
    assert config.trainer.logger[0].init_args.offline is False  # W&B itself honours WANDB_MODE


@pytest.mark.integration
def test_a_run_without_login_trains_and_logs_offline(no_login, in_repo, tmp_path, alpaca_file, capsys):
    args = tiny_model_args(tmp_path, alpaca_file, "--trainer.max_steps", "2", "--samples.enabled", "false")
    args[args.index("--trainer.logger") + 1] = json.dumps(
        [{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "litsft"}}]
    )
    with pytest.warns(UserWarning, match="no W&B login"):
        cli = cli_main(["fit", *args])
    assert cli.trainer.global_step == 2
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.integration
def test_resume_logs_into_the_same_run_and_continues_the_samples_table(smoke_wandb_run, in_repo, tmp_path):
    cli, shared_run = smoke_wandb_run
    run = tmp_path / "run"  # a copy: resuming replaces the best checkpoint and the export of the shared run
    shutil.copytree(shared_run, run)
    first_id = cli.trainer.loggers[0].version
    last = next(run.rglob("last.ckpt"))
    assert run_id_from_checkpoint(last) == first_id
    first_columns = latest_table(next((run / "wandb").glob(f"offline-run-*-{first_id}")))["columns"]
    # a second job in the same folder: config.yaml exists already and is replaced, not an error
    resumed = cli_main(
        ["fit", "-c", "configs/smoke.yaml", "--trainer.default_root_dir", str(run),
         "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar", "false",
         "--trainer.max_epochs", "4", "--trainer.max_steps", "137", "--samples.every_n_steps", "1",
         "--ckpt_path", str(last)]
    )  # fmt: skip
    assert resumed.trainer.loggers[0].version == first_id and resumed.trainer.global_step == 137  # 2 more steps
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(first_id) for f in folders)
    columns = latest_table(folders[-1])["columns"]
    assert columns[: len(first_columns)] == first_columns and len(columns) > len(first_columns)
    assert next(iter(run.rglob("checkpoints"))).parent.name == first_id  # one checkpoint folder for the run


@pytest.mark.integration
def test_no_secret_in_any_file_of_the_run(smoke_wandb_run):
    """The W&B API key was set during the run: it is in no config, log, metrics file or checkpoint."""
    _, run = smoke_wandb_run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "config.yaml" for p in files)
    leaks = [str(p) for p in files if FAKE_WANDB_KEY.encode() in p.read_bytes()]
    assert leaks == []


@pytest.mark.integration
def test_the_full_resolved_config_is_logged_and_saved(smoke_wandb_run):
    _, run = smoke_wandb_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["samples"]["max_new_tokens"] == 32 and saved["data"]["val_size"] == 80
    history = next(run.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    for key in (b"default_root_dir", b"max_new_tokens", b"data/supervised_share", b"data/tokens_p99"):
        assert key in history, key  # config and data audit reached the W&B run


def test_redact_replaces_secret_keys_and_secret_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    config = {
        "trainer": {"logger": [{"init_args": {"settings": {"api_key": "k" * 40}, "project": "litsft"}}]},
        "model": {"max_new_tokens": 128, "tokenizer_name_or_path": None, "hub_token": "x" * 10},
        "notes": "token is hf_abcdefghijklmnop here",
        "password": "",
    }
    out = redact(config)
    assert out["trainer"]["logger"][0]["init_args"] == {"settings": {"api_key": REDACTED}, "project": "litsft"}
    assert out["model"] == {"max_new_tokens": 128, "tokenizer_name_or_path": None, "hub_token": REDACTED}
    assert out["notes"] == REDACTED and out["password"] == ""


def test_run_id_from_a_file_that_is_not_a_checkpoint_is_none(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_text("not a checkpoint")
    assert run_id_from_checkpoint(path) is None
