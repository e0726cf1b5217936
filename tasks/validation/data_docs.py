"""Data Docs page views that compile GX's Jinja templates once per process.

GX makes a new site builder, and with it new page views, every time it builds Data
Docs, and each view makes a Jinja environment of its own, so every gate call compiled
the ~50 templates of its three pages again: about 0.15 s of each call, a third of its
fixed cost. These views (named in the site config that :mod:`.gate` gives GX) share
one environment per view class and template folders, so a template is compiled on
its first use in the process and reused after; Jinja still reloads a template whose
file changed. The HTML is the same as GX's own views write.

This module imports GX at import time: :mod:`.gate` imports it only when it builds
a GX context, so importing the gate stays free of GX's import cost.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView

_lock = threading.Lock()


class _SharedEnvironment:
    """Reuse the Jinja environment of the first view of the class made with the same
    template folders (GX's filters, bound to that view, use nothing that differs)."""

    _environments: ClassVar[dict[tuple[str | None, str | None], Any]]

    def __init__(
        self, custom_styles_directory: str | None = None, custom_views_directory: str | None = None
    ) -> None:
        key = (custom_styles_directory, custom_views_directory)
        with _lock:
            env = self._environments.get(key)
            if env is None:
                super().__init__(custom_styles_directory, custom_views_directory)  # type: ignore[call-arg]
                self._environments[key] = self.env
                return
        self.custom_styles_directory = custom_styles_directory
        self.custom_views_directory = custom_views_directory
        self.env = env


class PageView(_SharedEnvironment, DefaultJinjaPageView):
    """GX's page view (expectation suite and validation result pages)."""

    _environments: ClassVar[dict[tuple[str | None, str | None], Any]] = {}


class IndexPageView(_SharedEnvironment, DefaultJinjaIndexPageView):
    """GX's index page view."""

    _environments: ClassVar[dict[tuple[str | None, str | None], Any]] = {}


def site_config(base_directory: str) -> dict[str, Any]:
    """The Data Docs site GX writes to ``base_directory``: GX's default site builder
    with the views above."""
    page = {"module_name": __name__, "class_name": PageView.__name__}
    return {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": base_directory,
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": __name__, "class_name": IndexPageView.__name__},
        },
        "site_section_builders": {
            section: {"view": page} for section in ("expectations", "validations", "profiling")
        },
    }
