"""Unmodified programs as LAN members: an asyncssh server and client behind two tunnels.

Each program runs in a subprocess under ``netshim run --via
"wisp://...?lan=demo&member=NAME&token=..."``: nothing in either knows about
netshim.  The server (member ``alice``) listens on port 8022 of its LAN address
with a host key made for the test and a password login; the client (member
``bob``) reaches it by its LAN name, logs in and runs a command.  A third
program that joined no LAN is refused the same address.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from test_wisp_lan_client import TOKEN, lan_gateway_in_thread

SERVER = """
import asyncio, sys
import asyncssh

async def handle(process):
    peer = process.get_extra_info("peername")[0]
    process.stdout.write(f"{process.command} ran on alice for {peer}\\n")
    process.exit(0)

class Server(asyncssh.SSHServer):
    def begin_auth(self, username):
        return True
    def password_auth_supported(self):
        return True
    def validate_password(self, username, password):
        return (username, password) == ("bob", "s3cret")

async def main():
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        Server, "0.0.0.0", 8022, server_host_keys=[key], process_factory=handle
    )
    print("listening", flush=True)
    async with server:
        await asyncio.sleep(60)

asyncio.run(main())
"""

CLIENT = """
import asyncio, sys
import asyncssh

async def main(host, password):
    async with asyncssh.connect(
        host, 8022, username="bob", password=password, known_hosts=None
    ) as connection:
        result = await connection.run("uptime", check=True)
        print(result.stdout, end="")

try:
    asyncio.run(main(sys.argv[1], sys.argv[2]))
except (OSError, asyncssh.Error) as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(3)
"""


def netshim_run(via: str, script: Path, *arguments: str) -> list[str]:
    return [
        sys.executable, "-m", "netshim", "run", "--via", via, "--",
        sys.executable, "-W", "ignore", str(script), *arguments,
    ]  # fmt: skip


def member_url(url: str, name: str) -> str:
    return f"{url}?lan=demo&member={name}&token={TOKEN}"


def test_asyncssh_server_and_client_on_two_members(tmp_path: Path) -> None:
    server_script, client_script = tmp_path / "server.py", tmp_path / "client.py"
    server_script.write_text(SERVER)
    client_script.write_text(CLIENT)
    with lan_gateway_in_thread() as url:
        server = subprocess.Popen(
            netshim_run(member_url(url, "alice"), server_script),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            started = time.monotonic()
            line = server.stdout.readline()
            assert line == "listening\n", (line, server.stderr.read() if server.stderr else "")
            assert time.monotonic() - started < 60

            def client(via: str, host: str, password: str) -> subprocess.CompletedProcess[str]:
                command = netshim_run(via, client_script, host, password)
                return subprocess.run(command, capture_output=True, text=True, timeout=90)

            done = client(member_url(url, "bob"), "alice.demo", "s3cret")
            assert done.returncode == 0, done.stdout + done.stderr
            # The server saw bob's LAN address (alice is .2, bob .3).
            assert done.stdout == "uptime ran on alice for 10.77.0.3\n"
            wrong = client(member_url(url, "carol"), "alice.demo", "wrong")
            assert wrong.returncode == 3
            assert "PermissionDenied" in wrong.stdout
            # Not a member: the LAN address is a private destination like any
            # other, which the gateway's policy refuses (EACCES).
            outsider = client(url, "10.77.0.2", "s3cret")
            assert outsider.returncode == 3
            assert outsider.stdout.startswith("PermissionError: [Errno 13]"), outsider.stdout
        finally:
            server.kill()
            server.communicate()
