"""The tasks a TDATrainer can have (apart, so that a trial imports no metrics code)."""

TASKS = ("regression", "classification")
