"""Prices per model and the run's money limit.

Prices are USD per million tokens, from the ``[prices]`` table of ``thinktree.toml``:

```toml
[prices]
"gpt-4o-mini" = { prompt = 0.15, completion = 0.60 }
```
A model without a price has no cost figure (never a made-up one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from thinktree.errors import ConfigError, RunLimitReached


@dataclass(frozen=True, slots=True)
class Price:
    prompt_per_m: float
    completion_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_m + completion_tokens * self.completion_per_m) / 1e6


def prices_from_config(config: dict[str, Any]) -> dict[str, Price]:
    table = config.get("prices", {})
    if not isinstance(table, dict):
        raise ConfigError("[prices] must be a table of model = { prompt = …, completion = … }")
    out: dict[str, Price] = {}
    for model, entry in table.items():
        try:
            price = Price(float(entry["prompt"]), float(entry["completion"]))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(
                f'price of "{model}" needs numbers: {{ prompt = 0.15, completion = 0.60 }} '
                "(USD per million tokens)"
            ) from None
        if price.prompt_per_m < 0 or price.completion_per_m < 0:
            raise ConfigError(f'price of "{model}" cannot be negative')
        out[str(model)] = price
    return out


class MoneyLimit:
    """Spent money so far; refuses new calls once ``limit`` is reached (in-flight ones finish)."""

    def __init__(self, limit: float, price: Price) -> None:
        self.limit = limit
        self.price = price
        self.spent = 0.0

    def check(self) -> None:
        if self.spent >= self.limit:
            raise RunLimitReached(
                f"run stopped: its money limit of ${self.limit:.4f} is reached "
                f"(${self.spent:.4f} spent)"
            )

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.spent += self.price.cost(prompt_tokens, completion_tokens)
