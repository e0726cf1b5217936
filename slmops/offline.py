"""Nothing reaches the network by default: the environment each entry point sets first.

Telemetry is off and Hugging Face runs offline (docs/architecture.md, "Nothing reaches
the network"). ``slmops`` and ``python -m slmops.serving`` call
:func:`apply_offline_defaults` before they import the libraries that read these
variables; a value already in the environment is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

OFFLINE_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
}
_TRUTHY = ("1", "true", "yes")


def apply_offline_defaults(env: MutableMapping[str, str] = os.environ) -> None:
    """Set each of :data:`OFFLINE_DEFAULTS` that ``env`` does not set, and spell a set
    ``DO_NOT_TRACK`` as ``true``: ``1`` is the convention, but MLflow reads only ``true``."""
    for name, value in OFFLINE_DEFAULTS.items():
        env.setdefault(name, value)
    if env["DO_NOT_TRACK"].strip().lower() in _TRUTHY:
        env["DO_NOT_TRACK"] = "true"
