"""Credentials out of what is shown: URIs with ``user:password@`` and secrets in text.

Tracking and database URIs (``registry.tracking_uri``, ``MLFLOW_TRACKING_URI``,
``feedback.db_url``) may carry a password; wherever one is logged, returned in
a flow result or put in an artifact it goes through :func:`redact_uri` first.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host — the password part, up to the last "@" before the
# host (a password may itself hold "@" or ":"; a path never starts before the host).
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@]*):(?P<secret>[^\s/]*)@"
)
# ...and credentials passed as query parameters (``?password=...``, ``&sslpassword=...``).
_QUERY = re.compile(
    r"(?P<key>[?&][A-Za-z_]*(?:password|passwd|pwd|secret|token|api_key|apikey)=)[^&\s#]+",
    re.IGNORECASE,
)


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info masked: ``user:***@host``.

    A URI without a password comes back unchanged; so does anything that is not
    a URI (a local path).
    """
    return redact_text(uri)


def redact_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every ``scheme://user:password@`` password and each of
    ``secrets`` (exact strings, e.g. a webhook URL) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY.sub(lambda m: m["key"] + MASK, text)
