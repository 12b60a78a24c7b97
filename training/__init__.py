"""Training side of w2v: the PyTorch model, checkpoints, import, pre-training and fine-tuning."""
