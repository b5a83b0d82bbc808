"""Click parameter types that answer a typo with "did you mean", as config keys already do."""
from __future__ import annotations

import difflib
from typing import Any

import click


class SuggestChoice(click.Choice):
    """A closed set of names; an unknown one fails naming the valid ones and the closest match."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(f"{value!r} is not one of {', '.join(repr(str(c)) for c in self.choices)}{hint}", param, ctx)


__all__ = ["SuggestChoice"]
