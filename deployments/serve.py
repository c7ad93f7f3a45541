"""Serve every deployment from this process: `python -m deployments.serve [--wait SECONDS]`.

Point PREFECT_API_URL at a Prefect server first (`prefect server start`; `make serve` starts both): the
process registers the deployments, then polls for scheduled and manually triggered runs and executes them
here until interrupted. Flows open $BATCHML_CONFIG (else ./batchml.toml) unless a run sets `config`.
`--wait` waits up to SECONDS for the server to answer first (handy when it was started a moment ago).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import httpx
from prefect import serve
from prefect.settings import PREFECT_API_URL

from deployments import to_deployments


def wait_for_api(timeout: float) -> str:
    """The API URL once `GET /health` answers 200; SystemExit when unset or not up within `timeout` s."""
    api = PREFECT_API_URL.value()
    if not api:
        raise SystemExit(
            "PREFECT_API_URL is not set: point it at a Prefect server, e.g. http://127.0.0.1:4200/api"
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{api.rstrip('/')}/health", timeout=2).status_code == 200:
                return str(api)
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no Prefect API at {api} after {timeout:g} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    """Register and serve all deployments declared in `deployments`."""
    parser = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait for the API first")
    args = parser.parse_args(argv)
    if args.wait > 0:
        api = wait_for_api(args.wait)
        print(f"Prefect API at {api}; UI at {api.rstrip('/').removesuffix('/api')}", file=sys.stderr)
    serve(*to_deployments())


if __name__ == "__main__":
    main()
