"""Test-only driver: one `score-and-publish` flow run in its own process, against the API in PREFECT_API_URL.

    python tests/flow_driver.py CONFIG START_AT

Waits until START_AT (so two drivers start together), then runs the flow with its work slowed by a second,
and prints the monotonic times its work started and ended plus the flow's result, as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import flows.score


def main() -> None:
    """Run the flow once; print {"inside": [start, end], "result": ...}."""
    config, start_at = sys.argv[1], float(sys.argv[2])
    original = flows.score._score_and_publish
    inside: list[float] = []

    def slow_work(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inside.append(time.time())
        time.sleep(1.0)  # long enough that an unguarded second run would overlap
        try:
            return original(*args, **kwargs)
        finally:
            inside.append(time.time())

    flows.score._score_and_publish = slow_work
    time.sleep(max(0.0, start_at - time.time()))
    result = flows.score.score_and_publish("default_risk", config=config)
    print(json.dumps({"inside": inside, "result": result}, default=str))


if __name__ == "__main__":
    main()
