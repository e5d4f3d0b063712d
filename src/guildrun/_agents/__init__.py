"""Agent CLI presets: one module per CLI behind the small seam of `base`.

`PRESETS[kind]` gives the preset for a specialist's `agent:`; see `base` for how the
engine drives one (build the invocation, feed stdout lines to the reader, ask it for the
verdict).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .aider import Aider
from .base import AgentSpec as AgentSpec
from .base import Invocation as Invocation
from .base import Preset as Preset
from .base import RateLimited as RateLimited
from .base import Reader as Reader
from .base import Refused as Refused
from .base import SessionStarted as SessionStarted
from .base import Signal as Signal
from .base import Verdict as Verdict
from .claude import Claude
from .codex import Codex
from .gemini import Gemini

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {"claude": Claude(), "codex": Codex(), "gemini": Gemini(), "aider": Aider()}
)
