"""The labeled dataset and the frozen test split: files, the train/validation split,
DVC versions."""
