"""What this tox run skipped, named at its end: the last environment of the envlist.

    python tests/tools/skipped.py            # `tox -e skipped`
    python tests/tools/skipped.py --clear    # the first environment: forget earlier runs

Prints ``nothing skipped``, or ``skipped: image, rehearsal`` and one line per
reason (``rehearsal: needs haproxy (apt-get install haproxy)``), from the
records under tox's work directory (`tests.support.skips`), then removes
them so that the next run starts with none. Exit status 0 either way: a
skip is not a failure here, CI fails where it happens instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: `python tests/tools/skipped.py`
    sys.path.insert(0, str(ROOT))

from tests.support import skips  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clear", action="store_true", help="remove the records, print nothing")
    options = parser.parse_args(argv)
    folder = skips.records()
    if folder is None:
        parser.error("run under tox: the records live in its work directory (TOX_WORK_DIR)")
    if not options.clear:
        print(skips.summary(folder), flush=True)
    skips.clear(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
