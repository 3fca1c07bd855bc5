"""What a candidate is fine-tuned and evaluated on: the training loop, distillation, evaluation, BN recalibration."""
