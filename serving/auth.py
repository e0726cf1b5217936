"""Who is calling, and whether they may: API keys and roles, checked before any body is read.

Each endpoint declares the role it needs once, where it is registered:
``dependencies=[requires(Role.reviewer)]`` (``read=True``: only when
``serve.protect_reads`` is on). Roles and keys are in
:mod:`slmops.tasks.feedback.keys`.

The check itself is :class:`Authenticate`, a pure ASGI middleware, because FastAPI
reads and parses a JSON body *before* it runs a route's dependencies: a
dependency could only refuse a request after taking in its body. The middleware
matches the request against the app's routes (what Starlette's router does next,
a few regular expressions), reads the :class:`RoleGuard` in the matched route's
dependencies, resolves the ``Authorization: Bearer`` header to a
:class:`~slmops.tasks.feedback.keys.Principal`, and answers 401 (no key, an
unknown or revoked one), 403 (a valid key whose role is too low) or 503 (no
key configured at all) without calling the app, so the body is never received.
Otherwise it puts the principal in the request's state, where the endpoints
read it (:data:`PrincipalDep`); the guard, run as a dependency, checks again,
so a route cannot be served should the middleware be missing.

Keys are looked up by their public id and cached for :data:`KEY_CACHE_SECONDS`
(the row, not the verdict: every request's secret is checked against the
cached salted hash). A revoked key is refused at most that long after
``slmops keys revoke``. Requests without a key cost no lookup at all.

The shared token (``serve.token_env`` / ``serve.token_file``) is the admin
principal ``api-token``, read on every request so a rotated token applies at
once. Keys and tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from slmops.serving.schemas import ErrorResponse
from slmops.tasks.core.config import Params, ServeConfig
from slmops.tasks.feedback.keys import (
    KEY_CACHE_SECONDS,
    TOKEN_PRINCIPAL,
    KeyStore,
    Principal,
    Role,
    StoredKey,
    parse_key,
)

log = logging.getLogger(__name__)

KEY_CACHE_ENTRIES = 4096  # beyond: the oldest entries go (unknown ids flooding in)
PRINCIPAL = "slmops_principal"  # request-state key: the caller's Principal, or None
AUTHENTICATED = "slmops_authenticated"  # request-state key: the middleware ran

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`slmops keys add NAME --role ROLE`), or the shared token of "
    "serve.token_env / serve.token_file (an admin).",
)
# In the endpoints' signatures only for the OpenAPI schema (the lock in /docs):
# the middleware has already read the header.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

# The answers of an endpoint behind a key, for its OpenAPI ``responses``.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked key."},
    403: {"model": ErrorResponse, "description": "The key's role is too low."},
    503: {"model": ErrorResponse, "description": "No key configured, or no model loaded."},
}


def configured_token(params: Params) -> str | None:
    """The shared token: the environment variable ``serve.token_env``, else ``serve.token_file``.

    Read on every call, so a rotated token applies without a restart.
    """
    serve = params.serve
    value = os.environ.get(serve.token_env, "").strip()
    if value:
        return value
    if serve.token_file:
        try:
            value = params.path(serve.token_file).read_text(encoding="utf-8").strip()
        except OSError:
            log.warning("serve.token_file %s cannot be read", serve.token_file)
            return None
        return value or None
    return None


class Authenticator:
    """Turns a presented key into a principal: the shared token, or an API key (cached)."""

    def __init__(
        self,
        params: Params,
        keys: KeyStore,
        *,
        ttl: float = KEY_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.params = params
        self.keys = keys
        self.ttl = ttl
        self.clock = clock
        self._rows: dict[str, tuple[float, StoredKey | None]] = {}
        self._any_key: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def _token(self, presented: str) -> Principal | None:
        expected = configured_token(self.params)
        # Constant-time comparison: response timing reveals nothing about the token.
        if expected is not None and hmac.compare_digest(presented.encode(), expected.encode()):
            return Principal(TOKEN_PRINCIPAL, Role.admin)
        return None

    def _cached(self, key_id: str) -> tuple[bool, StoredKey | None]:
        with self._lock:
            entry = self._rows.get(key_id)
        if entry is None or self.clock() - entry[0] >= self.ttl:
            return False, None
        return True, entry[1]

    def _fetch(self, key_id: str) -> StoredKey | None:
        # Stamped before the read: a row is never trusted longer than ttl after it was read.
        read_at = self.clock()
        stored = self.keys.stored(key_id)
        with self._lock:
            self._rows.pop(key_id, None)
            while len(self._rows) >= KEY_CACHE_ENTRIES:
                del self._rows[next(iter(self._rows))]  # the oldest
            self._rows[key_id] = (read_at, stored)
        return stored

    async def principal(self, presented: str) -> Principal | None:
        """The principal of ``presented`` (a key or the shared token), or None.

        A cache miss reads the key's row on a worker thread, never on the event loop.
        Whether an id exists may show in the timing; the id is public, the secret is not.
        """
        found = self._token(presented)
        if found is not None:
            return found
        parsed = parse_key(presented)
        if parsed is None:
            return None
        key_id, secret = parsed
        hit, stored = self._cached(key_id)
        if not hit:
            stored = await anyio.to_thread.run_sync(self._fetch, key_id)
        return stored.check(secret) if stored is not None else None

    def _has_keys(self) -> bool:
        entry = self._any_key
        if entry is not None and self.clock() - entry[0] < self.ttl:
            return entry[1]
        read_at = self.clock()
        found = self.keys.has_active()
        self._any_key = (read_at, found)
        return found

    async def configured(self) -> bool:
        """Whether anyone can be authenticated: a shared token or an active key."""
        if configured_token(self.params) is not None:
            return True
        return await anyio.to_thread.run_sync(self._has_keys)

    def configured_now(self) -> bool:
        """:meth:`configured`, from synchronous code (at startup)."""
        return configured_token(self.params) is not None or self._has_keys()


class RoleGuard:
    """The role a route needs, declared where the route is registered (:func:`requires`).

    As a dependency it checks the principal the middleware found once more: a
    route stays closed even if :class:`Authenticate` were not installed.
    """

    def __init__(self, role: Role, *, read: bool = False) -> None:
        self.role = role
        self.read = read

    def needed(self, serve: ServeConfig) -> Role | None:
        """The role needed now: none for a read while ``serve.protect_reads`` is off."""
        return None if self.read and not serve.protect_reads else self.role

    async def __call__(self, request: Request, _credentials: BearerCredentials) -> None:
        state = request.scope.get("state", {})
        if not state.get(AUTHENTICATED):
            raise RuntimeError("the Authenticate middleware is not installed")
        needed = self.needed(request.app.state.service.serve)
        principal: Principal | None = state.get(PRINCIPAL)
        if needed is not None and (principal is None or not principal.role.allows(needed)):
            raise HTTPException(403 if principal else 401, "not allowed")


def requires(role: Role, *, read: bool = False) -> Any:
    """The dependency that puts a route behind ``role`` (``read``: only when
    ``serve.protect_reads`` is on). Use it in the route's ``dependencies``."""
    return Depends(RoleGuard(role, read=read))


async def _principal(request: Request) -> Principal | None:
    return request.scope.get("state", {}).get(PRINCIPAL)


# The caller's principal (None: anonymous), as the middleware found it.
PrincipalDep = Annotated[Principal | None, Depends(_principal)]


def route_guard(scope: Scope) -> RoleGuard | None:
    """The :class:`RoleGuard` of the route this request goes to, if it has one.

    Matched the way Starlette's router will match it next; a path matched for
    another method (405) or no route (404) needs no role.
    """
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            for dependency in getattr(route, "dependencies", ()):
                if isinstance(dependency.dependency, RoleGuard):
                    return dependency.dependency
            return None
    return None


def bearer(scope: Scope) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, else None."""
    for key, value in scope["headers"]:
        if key == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            credential = credential.strip()
            return credential if scheme.lower() == "bearer" and credential else None
    return None


class Authenticate:
    """Resolve the caller's key and refuse what its role does not allow, before the
    app runs (see the module doc): the body of a refused request is never read."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def _refusal(
        self, scope: Scope, needed: Role, principal: Principal | None, presented: str | None
    ) -> JSONResponse | None:
        if principal is not None:
            if principal.role.allows(needed):
                return None
            detail = (
                f"{scope['path']} needs the {needed} role; the key of {principal.name!r} "
                f"has the {principal.role} role"
            )
            return JSONResponse({"detail": detail}, status_code=403)
        if not await self.auth.configured():
            env = self.auth.params.serve.token_env
            detail = (
                "this endpoint is disabled until an API key is configured: create one with "
                f"`slmops keys add NAME --role {needed}`, or set the environment variable "
                f"{env} (or serve.token_file in params.yaml) on the server"
            )
            return JSONResponse({"detail": detail}, status_code=503)
        if presented is None:
            detail = "missing API key: send the header 'Authorization: Bearer <key>'"
        else:
            detail = "invalid API key (unknown, mistyped or revoked)"
        headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse({"detail": detail}, status_code=401, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Note the principal in the request state, or answer 401/403/503 at once."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = bearer(scope)
        principal = await self.auth.principal(presented) if presented else None
        state = scope.setdefault("state", {})
        state[PRINCIPAL] = principal
        state[AUTHENTICATED] = True
        guard = route_guard(scope)
        needed = guard.needed(self.auth.params.serve) if guard is not None else None
        if needed is not None:
            refusal = await self._refusal(scope, needed, principal, presented)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
