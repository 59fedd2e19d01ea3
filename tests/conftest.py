"""Test-session setup. Triton kernels run compiled on a GPU; without one they run under Triton's
interpreter on CPU tensors, which must be switched on before anything imports triton."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
