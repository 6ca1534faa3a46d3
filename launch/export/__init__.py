"""Hugging Face export: the folder (config, the model files, safetensors, generation config) and the tokenizer."""
