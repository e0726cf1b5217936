"""The MLflow boundary: tracking runs, registered versions, aliases, tags and artifacts;
the promotion gate and the promotion ledger. The only package that imports mlflow."""
