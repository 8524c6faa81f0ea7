"""Data: the synthetic task, LLaVA JSON reading, image preprocessing, collation and the datamodule."""
