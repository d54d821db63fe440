"""Correspondence-aware attention (CAA): the block, the set of blocks of a UNet and where they go, weight
loading, and patching a ComfyUI UNet (duck-typed: nothing here imports ComfyUI)."""
