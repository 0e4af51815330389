"""The science: pure functions on arrays."""
