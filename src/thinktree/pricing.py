"""Prices per model and the run's money limit.

Prices are USD per million tokens, from the ``[prices]`` table of ``thinktree.toml``:

```toml
[prices]
"gpt-4o-mini" = { prompt = 0.15, completion = 0.60 }
```
A model without a price has no cost figure (never a made-up one).

The money limit (``--max-cost``) is kept like the token ledger: a call holds its worst
case before it is sent and settles at what it cost (see :class:`MoneyLimit`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import structlog

from thinktree.errors import ConfigError, RunLimitReached

log = structlog.get_logger(__name__)

#: What a prompt's bound allows for a chat template's own tokens (role markers, a default
#: system prompt): per request, and per message.
TEMPLATE_TOKENS = 256
MESSAGE_TOKENS = 16
ROUNDING = 1e-12  # USD: sums of float costs are exact to far less than this


@dataclass(frozen=True, slots=True)
class Price:
    prompt_per_m: float
    completion_per_m: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt_per_m + completion_tokens * self.completion_per_m) / 1e6


#: The highest price taken, in USD per million tokens ($1 a token): far above any model's,
#: and low enough that no run's cost can overflow (10**12 tokens at it are $10**12).
MAX_PRICE = 1e6
_PRICE_KEYS = ("prompt", "completion")
_PRICE_FORMAT = "{ prompt = 0.15, completion = 0.60 } (USD per million tokens)"


def prices_from_config(config: dict[str, Any]) -> dict[str, Price]:
    """The ``[prices]`` table of a config; a one-line ConfigError for any price that is not
    a number from 0 to :data:`MAX_PRICE` (NaN, infinity, text), checked before anything
    starts, since a money limit or a cost total cannot be kept in such a price."""
    table = config.get("prices", {})
    if not isinstance(table, dict):
        raise ConfigError(f"[prices] must be a table of model = {_PRICE_FORMAT}")
    out: dict[str, Price] = {}
    for model, entry in table.items():
        if not isinstance(entry, dict) or not set(_PRICE_KEYS) <= set(entry):
            raise ConfigError(f'price of "{model}" needs both numbers: {_PRICE_FORMAT}')
        unknown = set(entry) - set(_PRICE_KEYS)
        if unknown:  # a price it does not know would be left out of every cost, unsaid
            raise ConfigError(
                f'price of "{model}": unknown key(s) {", ".join(sorted(unknown))}; '
                f"known: {', '.join(_PRICE_KEYS)}"
            )
        for key in _PRICE_KEYS:
            _check_amount(f'price of "{model}": {key}', entry[key])
        out[str(model)] = Price(float(entry["prompt"]), float(entry["completion"]))
    return out


def check_prices(prices: Mapping[str, Price]) -> None:
    """A one-line ConfigError for a price outside 0 to :data:`MAX_PRICE` (given other than
    through a config, which :func:`prices_from_config` checks)."""
    for model, price in prices.items():
        _check_amount(f'price of "{model}": prompt', price.prompt_per_m)
        _check_amount(f'price of "{model}": completion', price.completion_per_m)


def price_table(prices: Mapping[str, Price]) -> dict[str, dict[str, float]]:
    """``prices`` as a ``[prices]`` table holds them (a run's manifest records its own so)."""
    return {
        model: {"prompt": price.prompt_per_m, "completion": price.completion_per_m}
        for model, price in sorted(prices.items())
    }


def changed_prices(
    before: Mapping[str, Any], now: Mapping[str, Any], models: Iterable[str] | None = None
) -> list[str]:
    """The models (of ``models``; else of either table) whose price ``now`` is not the one
    ``before`` gave: a bench or a run resumed at other prices would count what it already
    paid for at the new ones, and report costs at two prices as one."""
    names = set(before) | set(now) if models is None else set(models)
    return sorted(model for model in names if before.get(model) != now.get(model))


def _check_amount(what: str, value: Any) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_PRICE  # NaN compares false too
    ):
        raise ConfigError(
            f"{what} must be a number of USD per million tokens from 0 to {MAX_PRICE:.0f}, "
            f"not {value!r}"
        )


def prompt_bound(texts: Iterable[str], messages: int) -> int:
    """At most how many prompt tokens a request of ``texts`` in ``messages`` messages counts.

    No tokenizer makes more tokens of a text than it has UTF-8 bytes (a byte-level BPE
    token is at least one byte, a SentencePiece one at least one character); the chat
    template's own tokens come on top, allowed for by :data:`TEMPLATE_TOKENS` and
    :data:`MESSAGE_TOKENS` per message.
    """
    return sum(len(t.encode()) for t in texts) + TEMPLATE_TOKENS + MESSAGE_TOKENS * messages


@dataclass(slots=True)
class Bill:
    """The money one call holds, from before it is sent until it settles."""

    limit: MoneyLimit
    price: Price
    prompt_tokens: int  # the prompt's bound the call is held for (with the learned excess)
    excess: int  # of which the excess learned from earlier calls
    max_tokens: int  # per choice: what the call may be sent with
    held: float
    open: bool = True
    cut_attempts: int = 0  # attempts cut off mid-stream and counted (see charge)
    cut_tokens: int = 0  # the completion tokens they streamed
    charged: float = 0.0  # what they were counted at, the prompt at its bound

    def charge(self, completion_tokens: int) -> None:
        """An attempt cut off mid-stream after ``completion_tokens`` is to be sent again:
        count what it cost (its prompt at the bound held for it), where the limit also
        holds another attempt (else :class:`~thinktree.errors.RunLimitReached`)."""
        self.limit.charge(self, completion_tokens)

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """The call came back: it costs what its usage says (with its attempts cut off
        mid-stream: the call's result counts them)."""
        self.limit.settle(self, prompt_tokens, completion_tokens)

    def release(self, cut_tokens: int = 0) -> None:
        """The call failed or was cut off: it costs what its attempts cut off mid-stream
        streamed (``cut_tokens``: the last one's, not sent again), each with its prompt at
        its bound; one that streamed nothing costs nothing."""
        attempts = self.cut_attempts + (1 if cut_tokens else 0)
        self.limit.settle(self, self.prompt_tokens * attempts, self.cut_tokens + cut_tokens)


MONEY_STOP: Final = "run stopped: its money limit of"
MONEY_REACHED: Final = re.compile(r"run stopped: its money limit of \$[\d.,]+ is reached \(")


def usd(amount: float) -> str:
    """``amount`` in dollars, to the cent from $1 on and to three figures below it
    ("$0.000247", not "$0.0002"; "$0.00008", not "$0.0001"), no exponent."""
    if amount >= 1 or amount <= 0:
        return f"${max(amount, 0.0):,.2f}"
    places = max(2, 2 - math.floor(math.log10(amount)))
    whole, cents = f"{amount:.{places}f}".split(".")
    return f"${whole}.{cents[:2]}{cents[2:].rstrip('0')}"


def at_least(amount: float) -> float:
    """``amount`` rounded up to the places :func:`usd` shows it with: a figure to give
    that is not below it once shown ("$1.24" for $1.2301, where usd shows "$1.23")."""
    if amount <= 0:
        return 0.0
    places = 2 if amount >= 1 else max(2, 2 - math.floor(math.log10(amount)))
    scale = 10.0**places
    return math.ceil(round(amount * scale, 6)) / scale


class MoneyLimit:
    """The run's money limit, never passed by calls under way.

    Before it is sent, a call holds its worst case (:meth:`hold`): its prompt's bound at
    the prompt price and every completion token it may make at the completion price; it
    settles at what it cost. A call that finds the rest held by calls under way waits for
    them; only a limit nobody holds affords a call less than it asked (it is then ``cut``)
    or none (:class:`~thinktree.errors.RunLimitReached`).
    """

    def __init__(self, limit: float, price: Price) -> None:
        self.limit = limit
        self.price = price
        self.spent = 0.0
        self.held = 0.0
        self.recorded = 0.0  # a resumed run's recorded calls not read back yet
        self.calls = 0  # calls holding money now
        self.excess = 0  # prompt tokens an endpoint counted beyond the bound, at most
        self.cut = False
        self._released: anyio.Event | None = None

    @property
    def cut_reason(self) -> str:
        return f"{MONEY_STOP} {usd(self.limit)} cut calls short"

    def final_reason(self) -> str:
        """Why the run stopped, as it ended: the first call the limit refused said what was
        spent then, but calls that fit in what was left went on after it."""
        spent = self.spent + self.recorded
        left = max(0.0, self.limit - spent)
        rest = (  # what sums of float costs leave of an amount spent whole is nothing
            f"; the {usd(left)} left paid for none of the calls it had left"
            if left > ROUNDING
            else ""
        )
        return f"{MONEY_STOP} {usd(self.limit)} is reached ({usd(spent)} spent{rest})"

    async def hold(
        self,
        prompt_tokens: int,
        max_tokens: int,
        *,
        choices: int = 1,
        least: int = 1,
        price: Price | None = None,
    ) -> Bill:
        """Hold the worst case of a call of ``choices`` × ``max_tokens`` completion tokens
        on a prompt of at most ``prompt_tokens``, at ``price`` (the run's model's unless
        given: a verifier's model has its own).

        The bill's ``max_tokens`` is the ask, or, where the limit held by no call affords
        less, the most it affords (``least`` at the least; less, or a prompt it cannot
        pay for, raises :class:`~thinktree.errors.RunLimitReached`).
        """
        price = price or self.price
        while True:
            prompt = prompt_tokens + self.excess
            left = self.limit - self.spent - self.held - self.recorded
            need = price.cost(prompt, choices * max_tokens)
            if need <= left + ROUNDING:
                return self._held(price, prompt, max_tokens, need)
            if self.calls:  # calls under way hold some: they may leave enough
                if self._released is None:
                    self._released = anyio.Event()
                await self._released.wait()
                continue
            most = _affords(price, left, prompt, choices, max_tokens)
            if most is None or most < least:
                raise RunLimitReached(self._reached(price.cost(prompt, choices * least), left))
            self.cut = True
            return self._held(price, prompt, most, price.cost(prompt, choices * most))

    def charge(self, bill: Bill, completion_tokens: int) -> None:
        """Count an attempt of ``bill``'s call cut off mid-stream (see :meth:`Bill.charge`)."""
        cost = bill.price.cost(bill.prompt_tokens, completion_tokens)
        left = self.limit - self.spent - self.held - self.recorded
        if cost > left + ROUNDING:  # its own hold stays for the attempt sent again
            raise RunLimitReached(
                self._reached(cost, left) + "; a call cut off mid-stream cannot be sent again"
            )
        self.spent += cost
        bill.charged += cost
        bill.cut_attempts += 1
        bill.cut_tokens += completion_tokens

    def settle(self, bill: Bill, prompt_tokens: int, completion_tokens: int) -> None:
        """Turn ``bill``'s hold into what the call cost (once; a second settle is ignored),
        its attempts cut off mid-stream included (what they were charged is taken back)."""
        if not bill.open:
            return
        bill.open = False
        self.calls -= 1
        self.held = self.held - bill.held if self.calls else 0.0
        self.spent += bill.price.cost(prompt_tokens, completion_tokens) - bill.charged
        each = prompt_tokens // (1 + bill.cut_attempts)  # the prompt, once per attempt
        if each > bill.prompt_tokens:  # the template added more than allowed for
            log.warning(
                "the endpoint counted more prompt tokens than the money limit held for",
                counted=each,
                held_for=bill.prompt_tokens,
            )
            self.excess = max(self.excess, bill.excess + each - bill.prompt_tokens)
        if self._released is not None:
            self._released.set()
            self._released = None

    def hold_recorded(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Hold what a recorded call cost, until the run reads it back or asks anew."""
        self.recorded += self.price.cost(prompt_tokens, completion_tokens)

    def release_recorded(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Stop holding a recorded call's cost (see :meth:`hold_recorded`)."""
        self.recorded = max(0.0, self.recorded - self.price.cost(prompt_tokens, completion_tokens))

    def read_back(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a call read back from the run's own call store as spent: it was paid for,
        and its cost was held for it, so it is never cut or refused."""
        self.spent += self.price.cost(prompt_tokens, completion_tokens)

    def _reached(self, least: float, left: float) -> str:
        spent = f"{usd(self.spent + self.recorded)} spent"  # recorded calls were spent too
        if left > ROUNDING:  # some is left, but not what the next call may cost
            spent += f"; the {usd(left)} left is less than the next call may cost, {usd(least)}"
        return f"{MONEY_STOP} {usd(self.limit)} is reached ({spent})"

    def _held(self, price: Price, prompt_tokens: int, max_tokens: int, cost: float) -> Bill:
        self.held += cost
        self.calls += 1
        return Bill(self, price, prompt_tokens, self.excess, max_tokens, cost)


def _affords(price: Price, left: float, prompt_tokens: int, choices: int, asked: int) -> int | None:
    """The most completion tokens per choice (at most ``asked``) ``left`` pays for on a
    prompt of ``prompt_tokens``; None where it cannot pay for the prompt."""
    rest = left - price.cost(prompt_tokens, 0)
    if rest + ROUNDING < 0:
        return None
    per_token = choices * price.completion_per_m / 1e6
    if per_token == 0:
        return asked
    most = min(asked, math.floor(rest / per_token + 1e-9))
    while most > 0 and price.cost(prompt_tokens, choices * most) > left + ROUNDING:
        most -= 1
    return max(most, 0)
