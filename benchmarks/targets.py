"""The verdict every benchmark ends with: each missed target, then the exit status."""

from __future__ import annotations


def verdict(missed: list[str]) -> int:
    """Print each missed target and a last line; return the exit status (1 on a miss)."""
    for line in missed:
        print(f"MISSED: {line}")
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0
