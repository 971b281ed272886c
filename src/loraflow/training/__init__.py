"""Fine-tuning: hyperparameters, token batches, the LoRA training loop, checkpoints, and the
pipeline from a checked request to a stored adapter."""
