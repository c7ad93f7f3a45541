"""CLI start-up cost: CPU seconds of `batchml` commands beside `python -c "import duckdb, typer, rich"`.

    python benchmarks/cli_startup.py [--repeat 5]

Each command runs as a fresh process, as a user or a script runs it; its CPU time (user + system, from
`getrusage` of the child) is what the machine pays, and is steadier than wall time on a busy machine.
Commands and baseline alternate (A B A B ...) and the best of `--repeat` runs is kept. Setup (sample data,
one trained, promoted and published model in a temporary project) is not timed. The target: each light
command within 2x the baseline.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _harness import sample_project_toml

BASELINE = [sys.executable, "-c", "import duckdb, typer, rich"]
COMMANDS = {
    "batchml --help": ["--help"],
    "batchml query": ["query", "SELECT model, version FROM model_aliases"],
    "batchml models list": ["models", "list"],
    "batchml info": ["info"],
}
TOML = sample_project_toml(num_iterations=20)


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    """User + system CPU seconds of one run of `argv` (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, env=_env())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATCHML_")}


def make_project(folder: Path) -> None:
    """A project with one model trained, promoted and its predictions published."""
    (folder / "batchml.toml").write_text(TOML)
    for args in (
        ["sample-data", "loans.csv", "--rows", "5000"],
        ["datasets", "snapshot", "loans"],
        ["train", "default_risk"],
        ["models", "promote", "default_risk", "1", "--reason", "benchmark"],
        ["score", "default_risk"],
    ):
        subprocess.run([sys.executable, "-m", "batchml", *args], cwd=folder, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="batchml-cli-") as tmp:
        folder = Path(tmp)
        make_project(folder)
        print(f"{'command':<22} {'CPU s':>7} {'baseline s':>11} {'ratio':>6}  (best of {args.repeat})")
        for name, command in COMMANDS.items():
            argv = [sys.executable, "-m", "batchml", *command]
            pairs = [(cpu_seconds(argv, folder), cpu_seconds(BASELINE, folder)) for _ in range(args.repeat)]
            best, base = min(p[0] for p in pairs), min(p[1] for p in pairs)
            print(f"{name:<22} {best:>7.3f} {base:>11.3f} {best / base:>5.2f}x")


if __name__ == "__main__":
    main()
