"""Language models: a Hugging Face causal LM, its tokenizer and its chat template."""
