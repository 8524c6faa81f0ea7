"""Commands that take a trained model out of a run: consolidation of sharded checkpoints, LoRA export, HF export."""
