"""Production monitoring: is the champion still seeing the world its test set showed it?

The champion's recent live predictions (from the feedback store) are compared
with its own predictions on the frozen test split (from its registry run):
comparing predictions with predictions needs no labels, so drift shows before
anyone corrects an answer. Too few live predictions (``monitoring.min_predictions``)
run no check and alert nobody: the report says so.

- :mod:`.sources`: the live window and the reference predictions;
- :mod:`.statistics`: label counts, PSI, chi-square, word-count buckets, histograms;
- :mod:`.checks`: the drift checks, their thresholds and verdicts;
- :mod:`.report`: the report's data, as ``latest.json`` and the alert carry it;
- :mod:`.render`: the self-contained HTML page and where the report is written;
- :mod:`.run`: :func:`~.run.run_monitoring`, one run from inputs to report and webhook.

The flow ``monitor`` (``flows/monitor.py``) runs it and emits the Prefect event
``slmops.monitoring.alert`` when a check fires.
"""
