"""Serve every deployment from this process: `python -m deployments.serve`.

Point PREFECT_API_URL at a Prefect server first (`prefect server start`); the process polls for scheduled and
manually triggered runs and executes them here until interrupted.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import serve

from deployments import to_deployments


def main() -> None:
    """Register and serve all deployments declared in `deployments`."""
    serve(*to_deployments())


if __name__ == "__main__":
    main()
