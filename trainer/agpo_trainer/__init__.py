"""AGPO trainer: RL post-training of reasoning LLMs (GRPO/AGPO) with vLLM rollouts."""
