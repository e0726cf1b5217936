"""Feedback from the served model: the prediction and feedback store, the review queue,
and ingestion of corrections into the labeled data."""
