"""Sequence classification: one label per text."""
