"""The API token: where it comes from, and the dependencies that require it.

Write endpoints need ``Authorization: Bearer <token>``; read endpoints too when
``serve.protect_reads`` is on. Without a configured token the write endpoints
answer 503 rather than accept anyone.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from slmops.serving.context import ServiceDep
from slmops.serving.schemas import ErrorResponse
from slmops.tasks.core.config import Params

log = logging.getLogger(__name__)

_bearer = HTTPBearer(
    auto_error=False,
    description="The API token configured on the server (the environment variable named by "
    "serve.token_env, or serve.token_file).",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

# The answers of an endpoint behind a token, for its OpenAPI ``responses``.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong token."},
    503: {"model": ErrorResponse, "description": "No token configured, or no model loaded."},
}


def configured_token(params: Params) -> str | None:
    """The API token: the environment variable ``serve.token_env``, else ``serve.token_file``.

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


# The dependencies are `async def` although they never await: FastAPI runs a
# plain `def` dependency on a worker thread, one thread hop per request for
# nothing (they only compare strings; the token file is a few bytes).
async def require_token(credentials: BearerCredentials, service: ServiceDep) -> None:
    """401 without the configured token, 503 when none is configured."""
    expected = configured_token(service.params)
    if expected is None:
        raise HTTPException(
            503,
            "this endpoint is disabled until an API token is configured: set the "
            f"environment variable {service.serve.token_env} (or serve.token_file in "
            "params.yaml) on the server",
        )
    if credentials is None:
        raise HTTPException(
            401,
            "missing token: send the header 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Constant-time comparison: response timing reveals nothing about the token.
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})


async def require_read(credentials: BearerCredentials, service: ServiceDep) -> None:
    """:func:`require_token` when ``serve.protect_reads`` is on; nothing otherwise."""
    if service.serve.protect_reads:
        await require_token(credentials, service)
