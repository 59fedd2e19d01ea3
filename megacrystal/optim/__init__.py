"""Optimizers: AdamW with fp32 masters (the ZeRO-1 variant lives in optim/distributed.py)."""
