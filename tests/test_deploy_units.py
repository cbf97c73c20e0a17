"""The systemd units in deploy/systemd pass `systemd-analyze verify`.

verify needs every ExecStart program to exist, so the units are rendered into a
temporary folder with /opt/messenger pointing at this checkout (whose .venv/bin
holds gunicorn and messenger) and the settings and nginx files at real files.
"""

import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_program

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
UNIT_NAMES = sorted(
    p.name for p in UNITS.iterdir() if p.suffix in (".service", ".timer")
)


def _render(target: Path, text_of: dict[str, str] | None = None) -> list[Path]:
    env_file = target / "messenger.env"
    env_file.write_text((ROOT / "deploy" / "messenger.env.example").read_text())
    rendered = []
    for name in UNIT_NAMES:
        text = (text_of or {}).get(name) or (UNITS / name).read_text()
        text = (
            text.replace("/etc/messenger/messenger.env", str(env_file))
            .replace("/etc/messenger/nginx.conf", str(ROOT / "deploy" / "nginx.conf"))
            .replace("/opt/messenger", str(ROOT))
        )
        path = target / name
        path.write_text(text)
        rendered.append(path)
    return rendered


def _verify(paths: list[Path]) -> list[str]:
    """verify's complaints about our units (it may also mention the host's)."""
    program = require_program("systemd-analyze", "systemd")
    result = subprocess.run(
        [program, "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if any(p.name in line for p in paths)]
    if result.returncode != 0 and not ours:
        ours = lines or [f"exit {result.returncode}"]
    return ours


def test_units_exist_for_the_app_the_push_worker_and_the_sweeper() -> None:
    assert {
        "messenger.service",
        "messenger-push.service",
        "messenger-sweep.service",
        "messenger-sweep.timer",
    } <= set(UNIT_NAMES)
    for name in ("messenger.service", "messenger-push.service"):
        text = (UNITS / name).read_text()
        for setting in (
            "Restart=always",
            "LimitNOFILE=",
            "EnvironmentFile=/etc/messenger/messenger.env",
            "User=messenger",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "MESSENGER_LOG_JSON=1",
        ):
            assert setting in text, (name, setting)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that each unit's program exists: messenger-nginx runs nginx.
    require_program("nginx", "nginx")
    assert _verify(_render(tmp_path)) == []


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # The check above can fail: a typo and a missing program are both reported.
    broken = (UNITS / "messenger.service").read_text()
    broken = broken.replace("Type=notify", "Tipe=notify").replace(
        ".venv/bin/gunicorn", ".venv/bin/no-such-gunicorn"
    )
    complaints = _verify(_render(tmp_path, {"messenger.service": broken}))
    assert any("Tipe" in line for line in complaints), complaints
    assert any("no-such-gunicorn" in line for line in complaints), complaints


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_every_unit_names_its_documentation(name: str) -> None:
    assert "Documentation=file:/opt/messenger/README.md" in (UNITS / name).read_text()
