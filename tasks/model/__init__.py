"""The model engine: runtime (device, precision, padding), the training loop and its
checkpoints, predictors per serving format (raw outputs), export and the evaluation
report. It is written against the task type interface and never imports a task type."""
