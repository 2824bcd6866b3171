"""ASGI and WSGI type aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import wsgiref.types

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

# The standard library's WSGI types, so ``WSGICostMiddleware(app.wsgi_app)`` type-checks
# against Flask and any other framework that uses them.
ExcInfo: TypeAlias = (
    "tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]"
)
WSGIEnviron: TypeAlias = "wsgiref.types.WSGIEnvironment"
StartResponse: TypeAlias = "wsgiref.types.StartResponse"
WSGIApp: TypeAlias = "wsgiref.types.WSGIApplication"
