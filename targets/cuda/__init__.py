"""CUDA GPU targets: the GPU build and compiled model (:mod:`.builder`)."""
