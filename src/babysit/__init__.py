"""babysit: build, train and babysit neural networks on PyTorch."""
