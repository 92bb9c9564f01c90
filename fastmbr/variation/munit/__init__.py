"""Learned models of natural variation: MUNIT (content encoder, style code δ, AdaIN decoder)."""
