"""Shared core: model families, loading, prompts, batched captioning, image hygiene,
datasets (incl. the synthetic shapes set) and the random-model factory."""
