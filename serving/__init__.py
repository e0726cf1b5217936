"""The prediction and feedback HTTP service (``python -m slmops.serving``)."""

from slmops.serving.app import create_app, run

__all__ = ["create_app", "run"]
