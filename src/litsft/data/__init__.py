"""Data: rows from files or the hub -> templates -> one tokenization with exact masks -> batches (`litsft.batch`).

Imports only itself and the shared modules (`batch`, `errors`, `atomic_files`, `hub`, `prompts`, `lightning_compat`):
never model, run or callback code (tests/test_import_graph.py).
"""
