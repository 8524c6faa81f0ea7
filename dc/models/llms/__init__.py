"""Language models: a Hugging Face causal LM, its tokenizer, its chat template and a chunked causal-LM loss."""
