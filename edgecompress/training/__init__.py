"""Training work on `--train-device`: device choice, DDP, distillation, evaluation of PyTorch models."""
