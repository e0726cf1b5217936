"""Credentials out of what is shown: URIs with ``user:password@`` and secrets in text.

Tracking and database URIs (``registry.tracking_uri``, ``MLFLOW_TRACKING_URI``,
``feedback.db_url``) may carry a password; wherever one is logged, returned in
a flow result or put in an artifact it goes through :func:`redact_uri` first.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host: the password, up to the last "@" before the query
# (a password may itself hold "@", ":" or "/"; masking a little too much is safe).
# scheme://userinfo@host without a colon: the whole userinfo, which is how tokens
# travel in URLs (https://<token>@host); a plain user name is masked with it.
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?:(?P<user>[^\s:/@?#]*):(?P<secret>[^\s?#]*)|(?P<token>[^\s:/@?#]+))@"
)
# ...and credentials passed as query parameters (``?password=...``, ``&sslpassword=...``).
_QUERY = re.compile(
    r"(?P<key>[?&][A-Za-z_]*(?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&\s#]+",
    re.IGNORECASE,
)


def _masked_userinfo(m: re.Match[str]) -> str:
    if m["user"] is None:
        return f"{m['scheme']}{MASK}@"
    return f"{m['scheme']}{m['user']}:{MASK}@"


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info masked (``user:***@host``), or the
    whole user info when it has no password (``***@host``: a token).

    A URI without user info comes back unchanged; so does anything that is not a
    URI (a local path).
    """
    return redact_text(uri)


def redact_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every ``scheme://user:password@`` password (or password-less user
    info) and each of ``secrets`` (exact strings, e.g. a webhook URL) replaced by
    ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(_masked_userinfo, text)
    return _QUERY.sub(lambda m: m["key"] + MASK, text)
