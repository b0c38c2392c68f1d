"""Embedded data sets, written in the real formats from a seed."""
