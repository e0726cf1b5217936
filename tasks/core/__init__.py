"""What every stage shares: typed configuration, errors, redaction, notifications, and
the task type interface that the engines are written against."""
