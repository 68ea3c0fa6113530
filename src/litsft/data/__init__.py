"""Data: loading Alpaca-style rows, templating, tokenization with exact loss masks, batching."""
