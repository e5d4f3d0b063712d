"""Policies: small objects that decide, in the manner of tenacity's `retry_if_*`.

- `retry`: how often and after how long a failed task is tried again.
- `endings`: what to do about an ended attempt (accept, retry, re-run alone, fail,
  stop a scope or everything, throttle a provider), as composable rules.
- `limiter`: how many tasks of one specialist may run at once, changeable mid-run.
"""
