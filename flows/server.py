"""Prefect's temporary API server, started before the heavy imports instead of after them.

With no ``PREFECT_API_URL``, Prefect starts the same server itself on the first flow
run, but only once prefect, mlflow and torch are imported: about 6 s of start-up that
could have overlapped with 4 s of imports. This module imports nothing from Prefect,
launches the server at once on 127.0.0.1, and points ``PREFECT_API_URL`` at it.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# What Prefect's own temporary server runs (prefect.server.api.server.SubprocessASGIServer);
# tests/test_cli.py fails when a Prefect release changes it.
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}


def uvicorn_arguments(app_dir: Path, port: int) -> list[str]:
    """Uvicorn's arguments for Prefect's API app on 127.0.0.1:``port``."""
    return [
        "--app-dir",
        str(app_dir),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TemporaryServer:
    """A Prefect API server for one process, stopped when the process exits."""

    def __init__(self) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        spec = importlib.util.find_spec("prefect")
        app_dir = Path(spec.origin).parent.parent  # type: ignore[union-attr, arg-type]
        command = [
            sys.executable,
            "-m",
            "flows.server",  # uvicorn, which exits when this process dies, even by kill -9
            str(os.getpid()),
            *uvicorn_arguments(app_dir, self.port),
        ]
        env = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry calls from a local run
            **os.environ,
            **SERVER_ENV,
        }
        self.process = subprocess.Popen(command, env=env)
        atexit.register(self.stop)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the server answers its health check."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"Prefect's temporary server exited with code {self.process.returncode}"
                raise RuntimeError(message)
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        message = f"Prefect's temporary server did not start within {timeout_s:.0f} s"
        raise RuntimeError(message)

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_if_needed() -> TemporaryServer | None:
    """Start a temporary server and point Prefect at it, unless an API URL is configured.

    Must run before prefect is imported, so that Prefect reads the new ``PREFECT_API_URL``.
    """
    if os.environ.get("PREFECT_API_URL") or configured_in_profile():
        return None
    server = TemporaryServer()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def configured_in_profile() -> bool:
    """Whether the active Prefect profile sets an API URL (read without importing prefect)."""
    import tomllib

    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return bool(profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def serve_for(parent: int, arguments: list[str]) -> None:
    """Run uvicorn with ``arguments`` until it stops or process ``parent`` is gone."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)  # the parent died without stopping us: nobody else will

    threading.Thread(target=watch, daemon=True).start()
    from uvicorn.main import main

    main(arguments)


if __name__ == "__main__":
    serve_for(int(sys.argv[1]), sys.argv[2:])
