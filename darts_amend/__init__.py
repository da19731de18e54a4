"""darts-amend: Amended-DARTS hypergradient estimation for PyTorch."""
__version__ = "0.1.0"
