"""Executors: where and how attempts run (see base.py for the seam)."""
