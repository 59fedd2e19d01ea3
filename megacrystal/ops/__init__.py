"""Fused ops. Each has a plain-torch reference; Triton kernels run on CUDA (see `dispatch.py`)."""
