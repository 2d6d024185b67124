"""Evaluation: lm-eval scoring of base vs adapters, the load benchmark and the gate."""
