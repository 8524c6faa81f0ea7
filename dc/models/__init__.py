"""Model parts: vision encoders, connectors, language models, and the VLM that composes them."""
