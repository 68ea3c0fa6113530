"""Weights & Biases around the CLI: offline fallback, one run per job, the run id kept across resumes, no secrets.

- No login or no network: the W&B logger is switched to offline with a warning that says how to sync later;
  training goes on (W&B would otherwise fail at once with "No API key configured", or hang on the network).
- Loggers without a `save_dir` write under `trainer.default_root_dir`, so one flag moves a whole run.
- The run id is stored in every checkpoint; `fit --ckpt_path CKPT` logs into that same run again.
- The resolved config is saved as `config.yaml` and logged to every logger (W&B's run config), with secrets
  (API keys, tokens, passwords; and any value equal to such an environment variable) replaced.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from litsft.atomic_files import write_text

CHECKPOINT_KEY = "litsft_wandb_run_id"
OFFLINE_MODES = {"offline", "dryrun", "disabled"}
REDACTED = "<redacted>"
# Config keys whose values are secrets. Not `max_new_tokens` or `tokenizer_name_or_path`.
SECRET_KEY = re.compile(
    r"api_?key|secret|passw(?:or)?d|credential|authorization|^token$|(?:hf|hub|auth|access|api)_token", re.I
)
SECRET_ENV = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD", re.I)


# -- which mode --------------------------------------------------------------------------------------------------


def _wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def _wandb_host() -> tuple[str, int]:
    url = urlparse(_wandb_url())
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def _api_key(host: str) -> str | None:
    """The API key W&B would use (environment, then ~/.netrc); "" for an identity-token login; None for none."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return ""
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def _bounded(fn, timeout: float):
    """fn() in a daemon thread, given at most `timeout` seconds (DNS lookups ignore socket timeouts):
    ("done", result), ("error", exception) or ("timeout", None)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("done", fn()))
        except Exception as err:  # noqa: BLE001 - reported to the caller
            outcome.append(("error", err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else ("timeout", None)


def _reachable(host: str, port: int, timeout: float) -> bool:
    """A TCP connection to the W&B server within `timeout` seconds (DNS included)."""

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    return _bounded(connect, timeout)[0] == "done"


def _key_verdict(key: str, timeout: float) -> str | None:
    """Ask the W&B server who the key belongs to (its GraphQL `viewer`, as `wandb login` does), within
    `timeout` seconds: None when it knows the key, else why logging online would fail or hang."""
    import base64
    import json
    import urllib.error
    import urllib.request

    host, port = _wandb_host()
    request = urllib.request.Request(
        f"{_wandb_url()}/graphql",
        data=json.dumps({"query": "query Viewer { viewer { id } }"}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode(),
        },
    )

    def ask():
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read(1 << 20) or b"{}")

    status, result = _bounded(ask, timeout)
    if status == "timeout" or (status == "error" and isinstance(getattr(result, "reason", result), TimeoutError)):
        return f"the W&B server {host}:{port} accepted a connection but did not answer within {timeout:g} s"
    if status == "error":
        if isinstance(result, urllib.error.HTTPError) and result.code in (401, 403):
            return (
                f"the W&B server {host}:{port} rejected the API key (HTTP {result.code}); check WANDB_API_KEY or "
                "run `wandb login --relogin`"
            )
        if isinstance(result, urllib.error.HTTPError):
            return f"the W&B server {host}:{port} answered HTTP {result.code}"
        return f"the W&B server {host}:{port} did not answer properly ({type(result).__name__}: {str(result)[:120]})"
    viewer = (result.get("data") or {}).get("viewer") if isinstance(result, dict) else None
    if not viewer:
        return f"the W&B server {host}:{port} does not know the API key; check WANDB_API_KEY or run `wandb login`"
    return None


def wandb_timeout() -> float:
    """Seconds the W&B start-up check may take: LITSFT_WANDB_TIMEOUT, default 10."""
    try:
        return max(0.1, float(os.environ.get("LITSFT_WANDB_TIMEOUT", "10")))
    except ValueError:
        return 10.0


def offline_reason(timeout: float | None = None) -> str | None:
    """Why W&B cannot log online from here (no login, no network, a silent server, a rejected key), or None.

    Bounded: at most `timeout` seconds for the connection, and as much again for the server's answer.
    """
    timeout = wandb_timeout() if timeout is None else timeout
    host, port = _wandb_host()
    key = _api_key(host)
    if key is None:
        return "no W&B login (no WANDB_API_KEY and no `wandb login` entry in ~/.netrc)"
    rank_zero_info(f"W&B: checking the login with {host}:{port} (at most {2 * timeout:g} s; LITSFT_WANDB_TIMEOUT)")
    if not _reachable(host, port, timeout):
        return f"the W&B server {host}:{port} cannot be reached (no network?)"
    return _key_verdict(key, timeout) if key else None


# -- the CLI's config, before the loggers are built ----------------------------------------------------------------


def _logger_entries(trainer_config) -> list:
    loggers = trainer_config.get("logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return [lg for lg in (loggers if isinstance(loggers, list) else [loggers]) if hasattr(lg, "class_path")]


def run_id_from_checkpoint(path: str | os.PathLike) -> str | None:
    """The W&B run id a litsft checkpoint was written under (None if it has none or cannot be read)."""
    import torch

    try:  # mmap: the weights are not read; weights_only: no code from the file runs (the id is a plain string)
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - not ours to report: Lightning loads it next and says what is wrong
        return None
    return checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None


def prepare_loggers(config, subcommand: str, check_online=offline_reason) -> None:
    """Adjust the logger entries of a subcommand's config in place (see the module docstring)."""
    trainer_config = config.trainer
    root = trainer_config.get("default_root_dir") or "."
    ckpt_path = config.get("ckpt_path")
    for entry in _logger_entries(trainer_config):
        args = entry.get("init_args")
        if args is None:
            continue
        is_wandb = entry.class_path.rsplit(".", 1)[-1] == "WandbLogger"
        if "save_dir" in args and args.save_dir in (None, "." if is_wandb else None):
            args.save_dir = root
        if not is_wandb:
            continue
        mode = os.environ.get("WANDB_MODE", "").lower()
        if not (args.get("offline") or mode in OFFLINE_MODES or str(args.get("mode")).lower() in OFFLINE_MODES):
            reason = check_online()
            if reason:
                args.offline = True
                rank_zero_warn(
                    f"W&B: {reason}. Logging offline to {os.path.join(args.save_dir, 'wandb')} instead; training "
                    f"goes on. To upload later: `wandb login`, then `wandb sync {args.save_dir}/wandb/offline-run-*`."
                )
        if subcommand == "fit" and ckpt_path and Path(ckpt_path).is_file() and not (args.get("id") or args.version):
            run_id = run_id_from_checkpoint(ckpt_path)
            if run_id:
                args.id = run_id
                rank_zero_info(f"W&B: resuming run {run_id} (its id is stored in {ckpt_path}).")


def finish_run() -> None:
    """End the process's W&B run (flushes the summary; the next job in this process starts a new run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# -- secrets ----------------------------------------------------------------------------------------------------------


def redact(value, secrets: set[str] | None = None):
    """A copy of a config (dicts, lists, scalars) with secret-named keys and secret values replaced."""
    if secrets is None:
        secrets = {v for k, v in os.environ.items() if SECRET_ENV.search(k) and len(v) >= 8}
    if isinstance(value, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v, secrets))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return REDACTED
    return value


class LoggedConfigCallback(SaveConfigCallback):
    """Saves the resolved config as `config.yaml` (replacing an older one) and logs it to every logger."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        config = redact(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        log_dir = trainer.log_dir  # every rank: this broadcasts rank 0's directory
        if trainer.is_global_zero:
            if self.save_to_log_dir and log_dir is not None:
                path = Path(log_dir) / self.config_filename
                write_text(path, yaml.safe_dump(config, sort_keys=False))  # atomic: never half a config.yaml
            for logger in trainer.loggers:
                logger.log_hyperparams(config)
        self.already_saved = True


class WandbRunIdCallback(Callback):
    """Stores the W&B run id in each checkpoint, for `fit --ckpt_path` to log into the same run."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[CHECKPOINT_KEY] = logger.version
                return
