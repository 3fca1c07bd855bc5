"""What ships: export and load of a pruned trial, finalize (re-prune, fine-tune fully, export), the model card."""
