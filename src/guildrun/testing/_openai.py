"""OpenAI placeholder (filled in below)."""

from __future__ import annotations

from ._anthropic import Anthropic as Chat
from ._anthropic import Anthropic as Responses

__all__ = ["Chat", "Responses"]
