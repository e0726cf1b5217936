"""The steps as the flows, the CLI and the dvc stages run them: each picks the project's
task type once and passes it to the engines."""
