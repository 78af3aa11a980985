"""Shared package of the staged interactive world-model training recipe."""
