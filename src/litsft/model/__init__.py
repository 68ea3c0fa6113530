"""Model: the Hugging Face causal LM inside `SFTModule`, its masked loss, optimizer, LoRA, sharding and decoding.

Imports only itself and the shared modules (`batch`, `errors`, `atomic_files`, `hub`, `prompts`, `lightning_compat`):
never data, run or callback code (tests/test_import_graph.py).
"""
