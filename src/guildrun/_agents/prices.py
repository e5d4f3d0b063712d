"""Prices for CLIs that report tokens but no cost (codex, gemini): USD per million tokens.

A figure computed from this table is an estimate and is marked so. The table is a
starting point, not a promise: `Prices.merged(...)` overrides or adds models (the lead
wires a setting to it), and a model not in it is priced as `default`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Price:
    input: float  # USD per million input tokens
    output: float  # USD per million output tokens
    cached_input: float | None = None  # defaults to the input price

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (
            (input_tokens - cached) * self.input
            + cached * cached_price
            + output_tokens * self.output
        ) / 1_000_000


_BUILT_IN = {
    "default": Price(1.25, 10.0, 0.125),
    "gpt-5": Price(1.25, 10.0, 0.125),
    "gpt-5-codex": Price(1.25, 10.0, 0.125),
    "gpt-5-mini": Price(0.25, 2.0, 0.025),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "o4-mini": Price(1.1, 4.4, 0.275),
    "gemini-2.5-pro": Price(1.25, 10.0, 0.31),
    "gemini-2.5-flash": Price(0.3, 2.5, 0.075),
}


@dataclass(frozen=True)
class Prices:
    table: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType(dict(_BUILT_IN)))

    def price(self, model: str | None) -> Price:
        """The model's price: exact name, then the longest known prefix, then `default`."""
        if model:
            if model in self.table:
                return self.table[model]
            prefixes = [name for name in self.table if model.startswith(name)]
            if prefixes:
                return self.table[max(prefixes, key=len)]
        return self.table["default"]

    def merged(self, overrides: Mapping[str, Price]) -> Prices:
        return Prices(MappingProxyType({**self.table, **overrides}))


PRICES = Prices()
