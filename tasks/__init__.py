"""SLMOps lifecycle steps: plain, typed functions that the CLI, dvc stages and flows call."""
