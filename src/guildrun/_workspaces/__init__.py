"""Workspaces: where a task's effect on the files lives (see base.py for the seam)."""
