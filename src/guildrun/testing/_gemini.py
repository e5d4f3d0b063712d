"""Gemini placeholder."""

from __future__ import annotations

from ._anthropic import Anthropic as Gemini

__all__ = ["Gemini"]
