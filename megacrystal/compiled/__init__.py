"""Compiled code: which native or CUDA path runs, how it is built, and how it is chosen.

native.py        the C++ data helpers (`_native`, built by CMake at install; numpy fallback)
build.py         building the CUDA kernels: `python -m megacrystal.compiled.build`
cuda_kernels.py  loading the CUDA kernels library through ctypes, its C ABI
select.py        `optim.impl` / grad-accumulation fusion: auto, torch, cuda, apex, and why
record.py        the user's record that this build passed its checks on this GPU (`megacrystal doctor --verify`)
apex.py          detecting NVIDIA apex's fused pieces without importing a broken install
"""
