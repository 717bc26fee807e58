"""``netshim gateway`` as a process: flags, config file, /healthz, graceful SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gateway_process import config_from_flags, refused_flags


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# comment\nvnc1: 10.0.0.5:5901\nv6: [fd00::5]:22\n")
    (tmp_path / "gateway.toml").write_text(
        'port = 9000\nallow = ["10.0.0.0/8:5432"]\nmotd = "from file"\n'
        f'token_file = "{tmp_path / "tokens"}"\n[users]\nalice = "pw"\n'
    )
    config, listen = config_from_flags(
        "--config", str(tmp_path / "gateway.toml"), "--port", "9100", "--user", "bob:x:y"
    )
    assert listen == {"host": "127.0.0.1", "port": 9100, "socks_port": None, "event_loop": "auto"}
    assert config.motd == "from file"
    assert config.users == {"alice": "pw", "bob": "x:y"}
    assert config.targets == {"vnc1": ("10.0.0.5", 5901), "v6": ("fd00::5", 22)}
    config.policy.check("db", "10.1.1.1", 5432)


def _http_get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock.recv(65536)


@pytest.mark.parametrize("event_loop", ["auto", "asyncio", "uvloop", "trio"])
def test_process_serves_health_and_stops_on_sigterm(event_loop: str) -> None:
    command = [sys.executable, "-m", "netshim", "gateway", "--port", "0", "--socks-port", "0"]
    with subprocess.Popen(
        [*command, "--event-loop", event_loop],
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        _check_process(process)


def _check_process(process: subprocess.Popen[str]) -> None:
    try:
        assert process.stderr is not None
        port = None
        deadline = time.monotonic() + 20
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if "listening protocol=http" in line:
                port = int(line.rsplit(":", 1)[1])
        assert port is not None
        assert _http_get(port, "/healthz").startswith(b"HTTP/1.1 200")
        assert b"netshim_gateway_connections" in _http_get(port, "/metrics")
        assert _http_get(port, "/nothing").startswith(b"HTTP/1.1 404")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "shutting down" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_buffer_flags_reach_the_config(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("max_message_size = 65536\n")
    config, _ = config_from_flags(
        "--config", str(tmp_path / "gateway.toml"), "--wisp-buffer-size", "16"
    )
    assert (config.wisp_buffer_size, config.max_message_size) == (16, 65536)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ports", "http"], "bad port range 'http'"),
        (["--ports", "90-80"], "bad port range '90-80'"),
        (["--allow", "10.0.0.0/33"], "10.0.0.0/33"),
        (["--wisp-buffer-size", "0"], "wisp_buffer_size must be 1..2**32-1"),
        (["--max-message-size", "100"], "max_message_size must be at least 1024"),
        (["--config", "/nonexistent/gateway.toml"], "No such file or directory"),
        (["--event-loop", "tokio"], "invalid choice"),
        (["--user", "alice"], "--user expects NAME:PASSWORD"),
    ],
)
def test_bad_configuration_is_one_clear_line(flags: list[str], message: str) -> None:
    assert message in refused_flags(*flags)


def test_bad_config_file_syntax_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("port = = 1\n")
    assert "netshim gateway:" in refused_flags("--config", str(tmp_path / "gateway.toml"))


def test_missing_gateway_dependencies_are_one_line_naming_the_extra() -> None:
    # As after a plain `pip install .`: the gateway's extra is not there.
    script = (
        "import sys; sys.modules['websockets'] = None\n"
        "from netshim.__main__ import main\n"
        "sys.exit(main(['gateway', '--port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "netshim gateway: websockets is not installed; install the gateway's "
        "dependencies with: pip install 'netshim[gateway]'"
    ]
