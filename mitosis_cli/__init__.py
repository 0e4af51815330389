"""mitosis: measure representation mitosis (redundant clones) in wide neural networks."""

__version__ = "0.1.0"
