"""Webhook notifications: a flow failed, a challenger was refused or promoted.

The URL is a secret (a Slack or Teams webhook URL is its own credential): it
comes from the environment variable named by ``notify.url_env`` or from the
file ``notify.url_file``, never from ``params.yaml``, and it is never logged.
A webhook that fails, answers an error or times out is logged (without the
URL) and the run goes on: a notification never masks what it reports.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from slmops.tasks.core.config import NotifyEvent, Params
from slmops.tasks.core.redact import redact_text

log = logging.getLogger(__name__)


def webhook_url(params: Params) -> str | None:
    """The webhook URL from ``notify.url_env``, else ``notify.url_file``; None if neither."""
    cfg = params.notify
    url = os.environ.get(cfg.url_env, "").strip()
    if not url and cfg.url_file:
        path = params.path(cfg.url_file)
        try:
            url = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            log.warning("notify.url_file %s: cannot read it (%s); nothing sent", path, reason)
            return None
    return url or None


def _describe(exc: BaseException, url: str) -> str:
    """What went wrong, without the URL (its path is the credential)."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        text = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(str(text), secrets=[url])


def send(params: Params, event: NotifyEvent | str, payload: dict[str, Any]) -> bool:
    """POST ``{"event": event, "time": ..., **payload}`` as JSON to the webhook.

    Only for events listed in ``notify.events`` and when a URL is configured.
    Returns whether the webhook took it (a 2xx answer); never raises.
    """
    try:
        event = NotifyEvent(event)
        if event not in params.notify.events:
            return False
        url = webhook_url(params)
        if url is None:
            log.debug(
                "no webhook URL in $%s or notify.url_file: %s not sent",
                params.notify.url_env,
                event,
            )
            return False
        if not url.lower().startswith(("http://", "https://")):
            log.warning("the webhook URL is not http(s): %s not sent", event)
            return False
        body = {"event": event.value, "time": datetime.now(UTC).isoformat(), **payload}
        request = urllib.request.Request(
            url,
            data=json.dumps(body, default=str).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "slmops-notify"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=params.notify.timeout_seconds) as resp:
                resp.read(4096)
        except Exception as exc:  # any failure of the webhook: logged, never raised
            log.warning("notification %s not delivered: %s", event.value, _describe(exc, url))
            return False
        log.info("notification %s delivered", event.value)
        return True
    except Exception as exc:  # a bug here must not hide the failure being reported
        log.warning("notification %s not sent: %s", event, type(exc).__name__)
        return False
