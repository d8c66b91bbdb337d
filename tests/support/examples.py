"""How many examples a property test asks Hypothesis for, scaled by the loaded profile."""

from __future__ import annotations

import hypothesis

# The profile of the loop of a few seconds (tests/README.md).
QUICK = "quick"
QUICK_EXAMPLES = 10


def examples(count: int) -> int:
    """`count`, or at most `QUICK_EXAMPLES` under the quick profile.

    A test that names its own count keeps it against every profile but the
    quick one, which exists to run every property in seconds.
    """
    if hypothesis.settings.get_current_profile_name() == QUICK:
        return min(count, QUICK_EXAMPLES)
    return count
