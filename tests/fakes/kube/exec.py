"""``kubectl exec`` over WebSocket: the channel protocols ``v5.channel.k8s.io`` and ``v4.channel.k8s.io``.

Every binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (one
``Status`` JSON when the command ends: Success, or NonZeroExitCode with the code as a cause),
4 resize (``{"Width": w, "Height": h}``). v5 adds 255, the close signal: ``[255, 0]`` from the
client means its stdin reached EOF; v4 has no way to say so. With a TTY there is no stderr.

The "container" runs a tiny command set, not a shell:

- ``echo [-n] WORDS...``, ``hostname``, ``env``/``printenv``;
- ``cat``: stdin to stdout until stdin closes;
- ``sleep N`` (at most 60 s): for tests that cut a session while it runs;
- ``sh -c SCRIPT``, where SCRIPT is ``;``-separated ``echo WORDS [>&2]``, ``cat`` and ``exit N``.

Anything else fails as the runtime fails it: "executable file not found in $PATH".
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.kube.http import WebSocket

__all__ = ["STDERR", "STDOUT", "Exec", "run_exec"]

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
MAX_SLEEP = 60.0


@dataclass
class Exec:
    """One exec session as the stand-in saw it (``KubeAPI.execs`` keeps them, for the tests)."""

    namespace: str
    pod: str
    container: str
    command: list[str]
    stdin: bool
    tty: bool
    protocol: str
    user: str
    resizes: list[tuple[int, int]] = field(default_factory=list)
    exit_code: int | None = None


Write = Callable[[int, bytes], Awaitable[None]]


class _Stdin:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False

    def feed(self, data: bytes | None) -> None:
        if not self.closed:
            self.queue.put_nowait(data)
            self.closed = data is None

    async def read(self) -> bytes | None:
        return await self.queue.get()


class _NotFound(Exception):
    pass


async def _cat(stdin: _Stdin | None, write: Write) -> int:
    while stdin is not None and (data := await stdin.read()) is not None:
        await write(STDOUT, data)
    return 0


async def _echo(words: list[str], write: Write, channel: int = STDOUT) -> int:
    newline = not (words and words[0] == "-n")
    text = " ".join(words[1:] if not newline else words)
    await write(channel, (text + ("\n" if newline else "")).encode())
    return 0


async def _sh(script: str, session: Exec, stdin: _Stdin | None, write: Write) -> int:
    code = 0
    for statement in filter(None, (s.strip() for s in script.split(";"))):
        try:
            words = shlex.split(statement)
            if words[0] == "exit":
                return int(words[1]) if len(words) > 1 else code
        except ValueError as exc:
            await write(STDERR, f"sh: {exc}\n".encode())
            return 2
        if words[0] == "echo":
            to_err = words[-1] == ">&2"
            code = await _echo(words[1:-1] if to_err else words[1:], write, STDERR if to_err else STDOUT)
        else:
            try:
                code = await _run(words, session, stdin, write)
            except _NotFound:
                await write(STDERR, f"sh: {words[0]}: not found\n".encode())
                code = 127
    return code


async def _run(argv: list[str], session: Exec, stdin: _Stdin | None, write: Write) -> int:
    name, args = argv[0], argv[1:]
    if name == "echo":
        return await _echo(args, write)
    if name == "cat" and not args:
        return await _cat(stdin, write)
    if name == "hostname":
        return await _echo([session.pod], write)
    if name in ("env", "printenv"):
        env = f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nHOSTNAME={session.pod}\n"
        await write(
            STDOUT, (env + "KUBERNETES_SERVICE_HOST=10.96.0.1\nKUBERNETES_SERVICE_PORT=443\n").encode()
        )
        return 0
    if name == "sleep" and len(args) == 1:
        try:
            seconds = float(args[0])
        except ValueError:
            await write(STDERR, f"sleep: invalid time interval '{args[0]}'\n".encode())
            return 1
        await asyncio.sleep(min(seconds, MAX_SLEEP))
        return 0
    if name in ("sh", "/bin/sh", "bash") and len(args) == 2 and args[0] == "-c":
        return await _sh(args[1], session, stdin, write)
    raise _NotFound(name)


def _status(session: Exec, code: int) -> dict[str, Any]:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    command = " ".join(session.command)
    return {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: "
        f"error executing command [{command}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _not_found_status(name: str) -> dict[str, Any]:
    message = (
        "Internal error occurred: error executing command in container: failed to exec in container: "
        "failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: "
        f'exec: "{name}": executable file not found in $PATH: unknown'
    )
    return {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }


async def run_exec(socket: WebSocket, session: Exec) -> None:
    """Run ``session.command`` over ``socket`` until it exits or the client goes away."""
    v5 = socket.subprotocol.startswith("v5.")
    stdin = _Stdin() if session.stdin else None

    async def write(channel: int, data: bytes) -> None:
        if session.tty and channel == STDERR:
            channel = STDOUT  # a terminal has one output stream
        await socket.send(bytes((channel,)) + data)

    async def read_loop() -> None:
        while (message := await socket.recv()) is not None:
            if not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDIN and stdin is not None and data:
                stdin.feed(data)
            elif channel == RESIZE:
                size = json.loads(data)
                session.resizes.append((int(size["Width"]), int(size["Height"])))
            elif channel == CLOSE and v5 and data[:1] == bytes((STDIN,)) and stdin is not None:
                stdin.feed(None)
        if stdin is not None:
            stdin.feed(None)

    reader = asyncio.ensure_future(read_loop())
    command = asyncio.ensure_future(_run(session.command, session, stdin, write))
    try:
        await asyncio.wait({reader, command}, return_when=asyncio.FIRST_COMPLETED)
        if not command.done():
            # The client went away (or closed the WebSocket) before the command ended.
            command.cancel()
            return
        try:
            session.exit_code = command.result()
            status = _status(session, session.exit_code)
        except _NotFound as exc:
            session.exit_code = 126
            status = _not_found_status(str(exc))
        await socket.send(bytes((ERROR,)) + json.dumps(status).encode())
        await socket.close()
        await asyncio.wait({reader}, timeout=5)  # the client's close frame
    finally:
        for task in (reader, command):
            task.cancel()
