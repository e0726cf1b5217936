"""Errors that reach the user: each names the file, row or field and what was wrong."""

from __future__ import annotations


class DataError(ValueError):
    """Input data cannot be used as it is (malformed file, missing column, unknown label).

    Raised before anything is written, so a rejected input changes nothing.
    """


class PromotionError(RuntimeError):
    """A promotion or rollback cannot be carried out (the message says why).

    Raised before an alias moves or the ledger is written.
    """
