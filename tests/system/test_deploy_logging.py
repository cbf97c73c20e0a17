"""gunicorn started as deploy/systemd/messenger.service starts it logs only JSON
lines (its own and the app's), for the journal."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import requests

from messenger.cli import gunicorn_argv
from messenger.embedded import free_port
from tests.conftest import Services

ROOT = Path(__file__).resolve().parents[2]
LOGGING = ROOT / "deploy" / "gunicorn-logging.json"


def test_the_unit_logs_json_lines_only(services: Services, settings: object) -> None:
    unit = (ROOT / "deploy" / "systemd" / "messenger.service").read_text()
    assert "--log-config-json /opt/messenger/deploy/gunicorn-logging.json" in unit
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    env.update(
        services.env(
            MESSENGER_PORT=str(port),
            MESSENGER_WORKERS="1",
            MESSENGER_LOG_LEVEL="INFO",
            MESSENGER_LOG_JSON="1",
        )
    )
    argv = gunicorn_argv()
    argv[-1:-1] = ["--log-config-json", str(LOGGING)]
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "gunicorn exited"
            try:
                url = f"http://127.0.0.1:{port}/v1/no-such-route"
                if requests.get(url, timeout=1).status_code == 404:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    lines = output.decode().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    loggers = {record["logger"] for record in records}
    assert "gunicorn.error" in loggers, lines
    assert any("Booting worker" in record["msg"] for record in records), lines
