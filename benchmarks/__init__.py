"""Reproducible measurements of SLMOps and their recorded results.

``python -m benchmarks [--quick] [--only NAME ...]`` runs every ``bench_*.py``
module here (each in its own process), writes ``results/<name>.json`` and
regenerates ``RESULTS.md``. See ``benchmarks/README.md``.
"""
