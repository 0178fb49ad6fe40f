"""Specimens: a procedural benchmark with known traits, its default model, and ground-truth scoring."""
