"""litsft: supervised fine-tuning of causal language models with Lightning."""

__version__ = "0.1.0"
