"""Is the Hugging Face hub usable from here? Decided once per run, before anything is loaded from it.

Offline, `from_pretrained` and `load_dataset` each retry every file five times with backoff (1+2+4+8+8 s, each
retry printed), then fail, and a run finds its problems one at a time: 43 s for the model, then the next error.
huggingface_hub reads HF_HUB_OFFLINE once, at import (its maintainers' advice for deciding at run time: set
`huggingface_hub.constants.HF_HUB_OFFLINE`); transformers 5 asks `huggingface_hub.is_offline_mode()`, which reads
that constant, and datasets keeps its own copy (`datasets.config.HF_HUB_OFFLINE`). So when the run needs the hub
and HF_HUB_OFFLINE is not set, one TCP connection to the hub's endpoint (or the proxy that serves it) decides; if it
fails, both libraries are switched to offline mode: what is cached loads at once, the rest fails at once, and the
preflight check (`litsft.run.preflight`) reports every missing piece in one message.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from litsft.errors import LitSFTError

TRUE = {"1", "ON", "YES", "TRUE"}
_detected: str | None = None  # why this process switched the hub libraries offline, if it did


def offline_by_env() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    env = any(os.environ.get(name, "").upper() in TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE and _detected is None)


def offline_reason() -> str | None:
    """Why the hub cannot be used in this run ("HF_HUB_OFFLINE=1 is set", "... cannot be reached"), or None."""
    if offline_by_env():
        return "HF_HUB_OFFLINE=1 is set"
    return _detected


def needs_hub(name: str | None) -> bool:
    """A hub id (`distilgpt2`, `org/name`), not a local file or folder."""
    return bool(name) and not looks_like_path(name) and not Path(name).expanduser().exists()


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _connect_target(url: str) -> tuple[str, int]:
    """Where a request to `url` goes first: the proxy that serves it (HTTPS_PROXY, ...), else the host itself."""
    parsed = urlparse(url)
    host = parsed.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(parsed.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return proxied.hostname or host, proxied.port or 80
    return host, parsed.port or (80 if parsed.scheme == "http" else 443)


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why `url` cannot be connected to within `timeout` seconds (DNS included, hence the thread), or None."""
    host, port = _connect_target(url)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as err:
            outcome.append(err.strerror or type(err).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"no answer from {host}:{port} within {timeout:g} s"
    return None if outcome[0] is None else f"{host}:{port}: {outcome[0]}"


def _switch_offline() -> None:
    """huggingface_hub (and so transformers) and datasets offline for the rest of this process."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def check_hub(names: list[str | None], timeout: float = 3.0) -> str | None:
    """Once per run, before loading: if any of `names` is a hub id, decide whether the hub can be used.

    Returns why it cannot (the libraries are then offline), or None when it can or is not needed.
    """
    global _detected
    if offline_by_env():
        _switch_offline()  # HF_HUB_OFFLINE set after the libraries were imported (a notebook): they follow it now
        return offline_reason()
    if _detected is not None or not any(needs_hub(name) for name in names):
        return _detected
    why = unreachable(endpoint(), timeout)
    if why is not None:
        _switch_offline()
        _detected = f"the Hugging Face hub {endpoint()} cannot be reached ({why})"
    return _detected


def looks_like_path(name: str) -> bool:
    """True when `name` is meant as a local path rather than a hub id like `distilgpt2` or `org/model`."""
    return (
        os.path.exists(name)
        or name.startswith((".", "/", "~"))
        or os.sep in name.strip("/").split("/", 1)[-1]  # more than one slash: org/model has exactly one
        or Path(name).suffix in {".json", ".jsonl", ".parquet", ".csv", ".yaml"}
    )


def explain_load_error(what: str, name: str, flag: str, err: Exception) -> LitSFTError:
    """A failed `from_pretrained` of `name` as one error that says what was tried and what to pass instead: a
    folder that does not exist or is not a model, a hub id missing from the cache offline, or a hub failure."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            return LitSFTError(f"{flag}: {what} folder '{name}' does not exist. Check the path.")
        return LitSFTError(
            f"{flag}: '{name}' is not a Hugging Face {what} folder ({type(err).__name__}: {err}). "
            f"Pass a folder written by `save_pretrained`, or a hub id such as 'distilgpt2'."
        )
    local = f"{flag} /path/to/{name.split('/')[-1]}"
    if offline_reason() is not None:  # decided once for the run (litsft.hub); never "set HF_HUB_OFFLINE=1" again
        from huggingface_hub import constants

        return LitSFTError(
            f"{flag}: {what} '{name}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}). Where there is "
            f"network, `hf download {name}` fills the cache (copy it here), or save it with `save_pretrained` and pass "
            f"the folder: {local}."
        )
    return LitSFTError(
        f"{flag}: could not load {what} '{name}' from the Hugging Face hub ({type(err).__name__}: {str(err)[:200]}). "
        f"Check the id (https://huggingface.co/{name}), or pass a local folder written by `save_pretrained`: {local}."
    )
