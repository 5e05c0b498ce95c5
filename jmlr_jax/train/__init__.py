"""Training: joint train state (optimizer groups, LoRA) and the fused JMLR step."""
