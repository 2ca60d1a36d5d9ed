"""Training side: lesion insertion, data loading, losses in use, the training loop, evaluation."""
