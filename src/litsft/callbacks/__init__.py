"""Lightning callbacks: samples, throughput, validation schedule, export, data audit, stops and state.

They talk to `SFTModule` and the datamodule through named public members only (tests/test_layout.py).
"""
