"""guildrun's benchmarks: `python -m benchmarks [--quick] [--write]`.

Every scenario measures guildrun and its comparison side by side in the same process
and the same minutes, so a busy machine slows both and the ratios stay meaningful.
Each module is one scenario; `_common` holds what they share and `_report` turns the
results into the printed table and docs/benchmarks.md.
"""
