"""The service's endpoints, one router per concern: predict; feedback and review;
operations (health, model, stats, metrics, reload)."""
