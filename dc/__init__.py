"""dc: the Dense Connector for multimodal LLMs, trained and evaluated with PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
