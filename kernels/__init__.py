"""Triton kernels, installed as ``recsys.kernels``. Nothing here imports triton at import time."""
