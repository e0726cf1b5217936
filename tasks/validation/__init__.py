"""The validation gate engine: Great Expectations checks that quarantine bad rows with
the reason. What is checked comes from the task type (its gate spec)."""
