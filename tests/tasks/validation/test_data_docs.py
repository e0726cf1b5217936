"""The Data Docs views that keep GX's compiled Jinja templates across gate calls."""

import re
from pathlib import Path

import pandas as pd

from slmops.tasks.core.config import parse_params
from slmops.tasks.task_types.sequence.validate import validate_frame
from slmops.tasks.validation import data_docs
from slmops.tasks.validation.data_docs import IndexPageView, PageView

LABELS = ["card_arrival", "exchange_rate"]


def _gate(docs_dir: Path) -> None:
    params = parse_params(
        {"validation": {"min_examples_per_class": 1}}, Path("params.yaml"), root=Path(".")
    )
    df = pd.DataFrame(
        {
            "text": ["Where is my new card?", None, "What is today's exchange rate?"],
            "label": ["card_arrival", "card_arrival", "exchange_rate"],
        }
    )
    result = validate_frame(df, params, LABELS, docs_dir=docs_dir)
    assert not result.passed  # the empty text: the pages show a failure, not only passes


def _pages(docs_dir: Path) -> dict[str, str]:
    """Every HTML page, with what differs from run to run (ids, times, names) masked."""
    masks = [
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID"),
        (r"\d{8}T\d{6}\.\d+Z", "TIME"),
        (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.\d]*(\+00:00|Z)?", "TIME"),
        (r"[0-9a-f]{32}", "HASH"),
        (r"slmops-[0-9a-f]{8}", "NAME"),
        (r"_run_time_sort.: [0-9.]+", "SORT"),
    ]
    pages = {}
    for path in sorted(docs_dir.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        for pattern, mask in masks:
            text = re.sub(pattern, mask, text)
        pages[path.relative_to(docs_dir).parts[0]] = text
    return pages


def test_views_share_one_environment_per_class_and_template_folders(tmp_path: Path):
    first, second = PageView(), PageView()
    assert first.env is second.env
    assert IndexPageView().env is not first.env  # another class, other templates
    # Other template folders (a project's custom views) get an environment of their own.
    custom = PageView(custom_views_directory=str(tmp_path))
    assert custom.env is not first.env
    assert custom.custom_views_directory == str(tmp_path)
    assert PageView(custom_views_directory=str(tmp_path)).env is custom.env


def test_gate_pages_are_the_same_as_with_gx_default_views(tmp_path: Path, monkeypatch):
    # Twice with the shared environment (the second call reuses compiled templates) ...
    _gate(tmp_path / "ours-1")
    _gate(tmp_path / "ours-2")

    # ... and once with GX's own views, which compile their templates every time.
    ours = data_docs.site_config

    def gx_views(base_directory: str) -> dict:
        config = ours(base_directory)
        del config["site_section_builders"]
        del config["site_index_builder"]["view"]
        return config

    monkeypatch.setattr(data_docs, "site_config", gx_views)
    _gate(tmp_path / "gx")

    expected = _pages(tmp_path / "gx")
    assert set(expected) == {"index.html", "expectations", "validations"}
    # The validation page shows the failed expectation, the index the failed run.
    assert "values must never be null" in expected["validations"]
    assert "≈66.667% not null" in expected["validations"]
    assert "Failed" in expected["index.html"]
    assert _pages(tmp_path / "ours-1") == expected
    assert _pages(tmp_path / "ours-2") == expected
