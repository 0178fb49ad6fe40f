"""Tests of traitlens.explain."""
