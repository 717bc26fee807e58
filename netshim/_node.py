"""What the Node-style modules (:mod:`netshim.net`, ``dgram``, ``dns``) share.

* :class:`EventEmitter`: ``on`` / ``once`` / ``off`` / ``emit`` as in Node's
  ``events`` module, for code ported from Node.  Listeners may be plain
  functions or coroutine functions; ``emit`` is a coroutine that calls them in
  the order they were added and awaits those that return an awaitable, so a
  slow ``"data"`` listener slows the reader down instead of piling data up.
* :class:`TaskGroupUser`: where a socket's background work (its reader, its
  listeners' tasks) runs: the ``task_group=`` it was given, or one of its own
  for the length of an ``async with`` block.
* :func:`system_error`: turns the ``OSError`` a stack raised into the same
  exception class carrying Node's ``code``, ``syscall``, ``address`` and
  ``port`` attributes, so ``except ConnectionRefusedError`` keeps working and
  ``err.code == "ECONNREFUSED"`` works too.
* :func:`node_error`: one of Node's own errors (``ERR_STREAM_WRITE_AFTER_END``,
  ``ERR_SOCKET_DGRAM_NOT_RUNNING``...) as the ``OSError`` subclass of the
  errno closest to it, with Node's ``code``.
"""

from __future__ import annotations

import errno as errno_module
import inspect
import os
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

import anyio
import anyio.abc

__all__ = ["EventEmitter", "NodeError", "TaskGroupUser", "node_error", "system_error"]

Listener = Callable[..., Any]
_E = TypeVar("_E", bound="EventEmitter")

# Node warns when one event has more listeners than this (events.defaultMaxListeners);
# a count that keeps growing is nearly always a listener added in a loop.
DEFAULT_MAX_LISTENERS = 10


class EventEmitter:
    """Listeners by event name, in the shape of Node's ``EventEmitter``.

    ``on(event, listener)`` adds a listener and returns the emitter, so calls
    chain; ``once`` adds one that is removed before its first call; ``off``
    removes the most recently added registration of ``listener``.  Adding a
    listener that is already there adds it again, as Node does.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[tuple[Listener, bool]]] = {}

    def on(self: _E, event: str, listener: Listener) -> _E:
        """Call ``listener`` each time ``event`` is emitted; returns ``self``."""
        return self._add(event, listener, once=False)

    add_listener = on

    def once(self: _E, event: str, listener: Listener) -> _E:
        """Call ``listener`` the next time ``event`` is emitted, then forget it."""
        return self._add(event, listener, once=True)

    def off(self: _E, event: str, listener: Listener) -> _E:
        """Remove the last registration of ``listener`` for ``event``, if any."""
        registrations = self._listeners.get(event, [])
        for index in range(len(registrations) - 1, -1, -1):
            if registrations[index][0] == listener:
                del registrations[index]
                break
        if not registrations:
            self._listeners.pop(event, None)
        self._listeners_changed(event)
        return self

    remove_listener = off

    def remove_all_listeners(self: _E, event: str | None = None) -> _E:
        """Forget every listener of ``event``, or of every event."""
        if event is None:
            events = list(self._listeners)
            self._listeners.clear()
        else:
            events = [event]
            self._listeners.pop(event, None)
        for name in events:
            self._listeners_changed(name)
        return self

    def listener_count(self, event: str) -> int:
        return len(self._listeners.get(event, ()))

    def listeners(self, event: str) -> list[Listener]:
        return [listener for listener, _ in self._listeners.get(event, ())]

    def event_names(self) -> list[str]:
        return list(self._listeners)

    async def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of ``event`` with ``args``; True if there were any.

        A listener that raises stops the emit and the exception propagates, as
        a throwing listener does in Node.
        """
        registrations = self._listeners.get(event)
        if not registrations:
            return False
        for registration in list(registrations):
            listener, once = registration
            if once:
                current = self._listeners.get(event, [])
                if registration in current:
                    current.remove(registration)
                    if not current:
                        self._listeners.pop(event, None)
            result = listener(*args)
            if inspect.isawaitable(result):
                await result
        return True

    def _add(self: _E, event: str, listener: Listener, *, once: bool) -> _E:
        if not callable(listener):
            raise TypeError(f"a listener must be callable, not {type(listener).__name__}")
        self._listeners.setdefault(event, []).append((listener, once))
        self._listeners_changed(event)
        return self

    def _listeners_changed(self, event: str) -> None:
        """Hook for subclasses that start or stop work as listeners come and go."""


class TaskGroupUser:
    """A socket whose background work runs in ``_task_group`` (see the module documentation).

    Subclasses set ``_task_group`` (the group they were given, or ``None``)
    and ``_own_group = None`` in ``__init__`` and say in :meth:`_end` how they
    close; leaving ``async with`` closes them, then ends their own group.
    """

    _task_group: anyio.abc.TaskGroup | None
    _own_group: anyio.abc.TaskGroup | None

    async def _end(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._task_group is None:
            group = anyio.create_task_group()
            await group.__aenter__()
            self._own_group = self._task_group = group
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        await self._end()
        group, self._own_group = self._own_group, None
        if group is None:
            return None
        group.cancel_scope.cancel()
        return await group.__aexit__(kind, value, traceback)


class NodeError(OSError):
    """Mixin base of every error the Node-style modules raise for a system failure.

    Instances are also the ``OSError`` subclass the failure would be in Python
    (``ConnectionRefusedError`` and so on).  ``code`` is the errno's symbolic
    name (Node's ``err.code``), or Node's own ``"ERR_..."`` code (see
    :func:`node_error`); ``syscall`` the operation that failed (``"connect"``,
    ``"read"``, ``"write"``, ``"listen"``, ``"bind"``, ``"send"``,
    ``"getaddrinfo"``...; ``None`` where Node has none), ``address`` and
    ``port`` the far end when known.  Unlike Node's negative ``errno``,
    :attr:`errno` keeps Python's positive value so that comparisons with the
    :mod:`errno` module work.
    """

    code: str
    syscall: str | None
    address: str | None
    port: int | None
    hostname: str | None
    _classes: ClassVar[dict[type[OSError], type[NodeError]]] = {}


def _node_class(kind: type[OSError]) -> type[NodeError]:
    if issubclass(kind, NodeError):
        return kind
    cached = NodeError._classes.get(kind)
    if cached is None:
        cached = type(kind.__name__, (NodeError, kind), {"__module__": kind.__module__})
        NodeError._classes[kind] = cached
    return cached


def _code_of(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        # Node reports a name that does not exist (or has no address) as ENOTFOUND.
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return "ENOTFOUND"
        if exc.errno == socket.EAI_AGAIN:
            return "EAI_AGAIN"
        return "EAI_FAIL"
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return "ETIMEDOUT"
    if exc.errno is None:
        return "EIO"
    return errno_module.errorcode.get(exc.errno, f"E{exc.errno}")


def system_error(
    exc: OSError,
    syscall: str,
    address: str | None = None,
    port: int | None = None,
    *,
    hostname: str | None = None,
) -> NodeError:
    """``exc`` as a :class:`NodeError` of the same ``OSError`` subclass.

    The message reads like Node's: ``"connect ECONNREFUSED 127.0.0.1:9"``,
    followed by the operating system's wording.  ``exc`` becomes the cause.
    """
    if isinstance(exc, NodeError):
        return exc
    code = _code_of(exc)
    where = ""
    if hostname is not None:
        where = f" {hostname}"
    elif address is not None:
        where = f" {address}" if port is None else f" {address}:{port}"
    number = exc.errno
    if number is None and code == "ETIMEDOUT":
        number = errno_module.ETIMEDOUT
    if isinstance(number, int) and number > 0 and not isinstance(exc, socket.gaierror):
        # The bare system wording: the stack's own detail repeats the address.
        detail = os.strerror(number)
    else:
        detail = exc.strerror or str(exc) or code
    kind = _node_class(type(exc))
    error = kind(number, f"{syscall} {code}{where} ({detail})")
    error.code = code
    error.syscall = syscall
    error.address = address
    error.port = port
    error.hostname = hostname
    error.__cause__ = exc
    return error


def node_error(number: int, code: str, message: str, syscall: str | None = None) -> NodeError:
    """Node's own error ``code`` (``"ERR_..."``) as a :class:`NodeError`.

    The class is the ``OSError`` subclass Python picks for ``number``
    (``EPIPE`` gives ``BrokenPipeError``), so ``except BrokenPipeError`` and
    ``err.errno`` work; ``code``, the message and ``syscall`` (mostly
    undefined on these errors, so ``None``) are Node's.
    """
    kind = _node_class(type(OSError(number, message)))
    error = kind(number, message)
    error.code = code
    error.syscall = syscall
    error.address = None
    error.port = None
    error.hostname = None
    return error
