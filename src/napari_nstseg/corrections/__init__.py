"""Learning from the user's corrections (issue 28): the corrections store and fine-tuning on it."""
