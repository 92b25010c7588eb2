"""Checks the graders share (image listing and opening live in hw2_utils)."""

from __future__ import annotations

from typing import Iterable

from hw2_utils import CLIError


def check_same_names(
    left: Iterable[str], right: Iterable[str], left_what: str, right_what: str
) -> None:
    """A CLIError naming (up to three of) the entries found on one side only."""
    left, right = set(left), set(right)
    for only, here, there in (
        (sorted(left - right), left_what, right_what),
        (sorted(right - left), right_what, left_what),
    ):
        if only:
            more = f" and {len(only) - 3} more" if len(only) > 3 else ""
            raise CLIError(f"{', '.join(only[:3])}{more}: in {here} but not in {there}")
