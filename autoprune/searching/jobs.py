"""Submit searches to a Ray cluster as Ray Jobs, and follow them.

The job runs the same entry point as a local search (``python -m autoprune.cli search ...``); inside
a job, ``ray.init()`` picks up the cluster from ``RAY_ADDRESS``, which the job supervisor sets. The
runtime environment carries the installed autoprune package (``py_modules``) and the working
directory (configs, your own model code); cluster nodes need autoprune's dependencies installed.
"""
from __future__ import annotations

import os
import shlex
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from autoprune.errors import AutopruneError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
CONNECT_TIMEOUT_S = 5.0
FORWARDED_ENV = ("AUTOPRUNE_DATA", "AUTOPRUNE_DEBUG")
EXCLUDES = [".venv", ".git", "runs", "__pycache__", "*.pt", "*.pt2", ".pytest_cache"]


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"


def client(address: str | None):
    """A JobSubmissionClient, after checking within seconds that the job server answers at all."""
    address = resolve_address(address)
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise AutopruneError(f"cluster address '{address}' must look like http://HEAD:8265")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise AutopruneError(f"cannot reach the Ray job server at {address}: {e.strerror or e}") from None
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's token authentication stays on
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, auth errors, version mismatch
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutopruneError(f"cannot use the Ray job server at {address}: {detail}") from None


def entrypoint(config: Path, working_dir: Path, out: str | None, sets: Sequence[str]) -> str:
    try:
        relative = config.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise AutopruneError(f"config '{config}' must be inside the working directory '{working_dir}'") from None
    args = ["python", "-m", "autoprune.cli", "search", str(relative)]
    if out:
        args += ["--out", out]
    for s in sets:
        args += ["--set", s]
    return shlex.join(args)


def submit(config: str, address: str | None, working_dir: str | None = None, out: str | None = None,
           sets: Sequence[str] = ()) -> str:
    """Submit ``autoprune search CONFIG`` as a Ray Job; return the job id."""
    import autoprune

    config_path, wd = Path(config), Path(working_dir or ".")
    if not config_path.is_file():
        raise AutopruneError(f"config file '{config_path}' does not exist")
    if not wd.is_dir():
        raise AutopruneError(f"working directory '{wd}' does not exist")
    from autoprune.config import load_config

    load_config(config_path, list(sets))  # reject a bad config here, not on the cluster
    command = entrypoint(config_path, wd, out, list(sets))
    runtime_env = {"working_dir": str(wd.resolve()), "excludes": EXCLUDES,
                   "py_modules": [str(Path(autoprune.__file__).parent)],
                   "env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    job_client = client(address)
    try:
        return job_client.submit_job(entrypoint=command, runtime_env=runtime_env,
                                     submission_id=f"autoprune-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AutopruneError(f"job submission to {resolve_address(address)} failed: {detail}") from None


def status(job_id: str, address: str | None) -> str:
    try:
        return str(client(address).get_job_status(job_id))
    except AutopruneError:
        raise
    except Exception as e:
        raise AutopruneError(f"no job '{job_id}' at {resolve_address(address)}: {str(e).splitlines()[0]}") from None


def logs(job_id: str, address: str | None, follow: bool, emit: Callable[[str], None]) -> None:
    """Pass the job's logs to ``emit``; with ``follow``, chunk by chunk as they arrive until the job ends."""
    job_client = client(address)
    try:
        if not follow:
            emit(job_client.get_job_logs(job_id))
            return
        import asyncio

        async def tail() -> None:
            async for chunk in job_client.tail_job_logs(job_id):
                emit(chunk)

        asyncio.run(tail())
    except AutopruneError:
        raise
    except Exception as e:
        raise AutopruneError(f"no logs for job '{job_id}' at {resolve_address(address)}: "
                             f"{str(e).splitlines()[0]}") from None
