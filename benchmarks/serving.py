"""Serving benchmark: publish cost against history depth, no-op publishes, point/batch and history lookups.

    python benchmarks/serving.py publishes [--rows 1000000] [--publishes 100] [--trees 5] [--workdir ...]
    python benchmarks/serving.py lookups [--rows 10000000] [--points 2000] [--trees 5] [--readers 8]
                                         [--threads N] [--memory-limit SIZE] [--serving FILE] [--keep FILE]
                                         [--workdir ...]

``publishes`` scores ``--publishes`` distinct runs of the same ``--rows``-row dataset version (each with its
own content key: a ``max_quarantine_share`` that differs in the 9th decimal, so the same predictions) and
publishes them one after another, timing each ``batchml.publish`` and the serving file's size after it; then
publishes the current run again and scores it again (the no-op: seconds, files and bytes changed), and on a
history reader (``batchml.connect(history=True)``) times ``batchml.lookup(con, model, [id], at=T)`` and the
SQL ``prediction_at(model, id, T)`` at random times T over the whole history (p50/p99). Runs against any
batchml that has ``publish`` (e.g. main's venv, for the before figures); the history part needs this branch.

``lookups`` scores and publishes one ``--rows`` run and measures, on one kept-open read-only connection with
batchml's reader settings: point lookups (``--points`` random served ids, each asked as SQL on the view,
``SELECT * FROM predictions WHERE model = ? AND entity_id = ?``, and as ``batchml.lookup(con, model, [id])``
in turn, p50/p99 of each) and ``batchml.lookup`` of 1k, 10k and 100k ids (10% not served; ids/s of the fastest
of 3; then the same point lookups again: every block they read is loaded by then, as in a reader that has
served a while; then ``batchml.lookup`` of those ids alone, not in turn with SQL, as an app that only looks
ids up asks: a query just before each mapped lookup triples what it takes). It does so on three layouts
of the same rows, side by side:

- "zone maps only": a copy of the file with its indexes dropped (rows still sorted by entity id);
- "ART index": the published file under another name (a hard link in the workdir): no lookup files beside
  it, so ``batchml.lookup`` asks DuckDB, through the index;
- "lookup files": the published file itself, with the lookup files the publish wrote beside it
  (``batchml.serving.lookup_files``): ``batchml.lookup`` reads them, not DuckDB (the SQL is the same).

Then ``--readers`` processes at once on the last layout, each with its own kept-open connection, doing the
same point lookups (their p50/p99 merged). ``--serving FILE`` measures an existing serving file instead (no
setup, no copy without indexes): "ART index" on FILE (on a hard link of it if it has lookup files), "lookup
files" on a hard link of FILE in the workdir with FILE's lookup files linked beside it, or written there
(timed) if FILE has none; nothing is written beside FILE. ``--keep FILE`` only publishes and moves the file
there with its lookup files (a 100M-row file takes ~5 min to build). Results are printed with the 1-minute
load average (the machine may be shared) and written to ``<workdir>/serving_<mode>_<rows>.json``; the links
and copies the benchmark made in the workdir are removed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from _harness import peak_rss_mib, run_child
from score import MODEL, ensure_data, setup_batchml, train_baseline

BATCHES = (1_000, 10_000, 100_000)
POINT = "SELECT * FROM predictions WHERE model = ? AND entity_id = ?"
SAMPLE = "SELECT entity_id FROM predictions USING SAMPLE reservoir({rows} ROWS) REPEATABLE (7)"
CHECKPOINTS = (1, 10, 100, 1000)


def _quantiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=100)
    return {"p50_ms": cuts[49] * 1e3, "p99_ms": cuts[98] * 1e3}


def _files(*folders: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for folder in folders
        for p in folder.rglob("*")
        if not p.is_dir()
    }


def _history_lookups(project: Any, times: list[tuple[datetime, str]], points: int) -> dict[str, Any]:
    """`lookup(..., at=T)` and `prediction_at` p50/p99 at random publish times on a history reader."""
    import batchml

    start = time.perf_counter()
    con = batchml.connect(project, history=True)
    result: dict[str, Any] = {"history_connect_ms": (time.perf_counter() - start) * 1e3}
    ids = [str(r[0]) for r in con.execute(SAMPLE.format(rows=points)).fetchall()]
    rng = random.Random(7)
    asked = [(ids[i], *rng.choice(times)) for i in range(len(ids))]
    api_s, sql_s = [], []
    for entity, at, run_id in asked:
        begin = time.perf_counter()
        table = batchml.lookup(con, MODEL, [entity], at=at)
        api_s.append(time.perf_counter() - begin)
        assert table.column("run_id").to_pylist() == [run_id], (entity, at)
    for entity, at, run_id in asked[: max(20, points // 10)]:
        begin = time.perf_counter()
        rows = con.execute("SELECT run_id FROM prediction_at(?, ?, ?)", [MODEL, entity, at]).fetchall()
        sql_s.append(time.perf_counter() - begin)
        assert rows == [(run_id,)], (entity, at)
    con.close()
    api, sql = _quantiles(api_s), _quantiles(sql_s)
    return {
        **result,
        **{f"at_lookup_{k}": v for k, v in api.items()},
        **{f"at_sql_{k}": v for k, v in sql.items()},
    }


def child_publishes(toml: str, dataset: str, publishes: int, points: int) -> dict[str, Any]:
    """Score and publish `publishes` distinct runs; time each publish, the no-op and history lookups."""
    import batchml
    from batchml.data import datasets
    from batchml.models.registry import Registry
    from batchml.scoring.runs import ScoringOptions
    from batchml.scoring.runs import score as score_dataset
    from batchml.serving.pointer import GRACE_SECONDS

    project = batchml.Project.open(toml)
    registry = Registry(project.storage)
    chosen = registry.resolve(MODEL, alias="champion")
    booster = registry.load_booster(chosen)
    version = datasets.get_version(project.storage, dataset)
    steps, times = [], []
    began = time.perf_counter()
    for i in range(publishes):
        options = ScoringOptions(max_quarantine_share=0.01 + i * 1e-9)  # a key of its own, same predictions
        run = score_dataset(project.storage, chosen, booster, version, options=options)
        start, cpu = time.perf_counter(), time.process_time()  # CPU: this process's, every thread's
        path = batchml.publish(project, MODEL, run.run_id)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        times.append((datetime.now(UTC), run.run_id))
        steps.append(
            {
                "publish": i + 1,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "file_mib": path.stat().st_size / 2**20,
            }
        )
    serving_files = [p for p in project.serving_dir.glob("serving-*.duckdb") if not p.is_symlink()]
    kept = {  # what the automatic collection left after the last publish
        "loop_seconds": time.perf_counter() - began,
        "serving_files": len(serving_files),
        "serving_mib": sum(p.stat().st_size for p in serving_files) / 2**20,
        # Their sidecars: the log state and the lookup files (a kept run's links count once per name)
        "sidecar_mib": sum(p.stat().st_size for p in project.serving_dir.glob("serving-*.duckdb.*")) / 2**20,
        "grace_seconds": GRACE_SECONDS,
    }
    folders = (Path(project.storage.root), project.serving_dir)
    before = _files(*folders)
    start = time.perf_counter()
    batchml.publish(project, MODEL, run.run_id)  # what `batchml score` does after finding the run: publish
    again = batchml.score(project, MODEL, alias=None, version=chosen.version, dataset=dataset)
    noop = time.perf_counter() - start
    after = _files(*folders)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    result: dict[str, Any] = {
        "seconds": sum(s["seconds"] for s in steps),
        "steps": steps,
        "noop_seconds": noop,
        "noop_files_changed": len(changed),
        "noop_bytes_changed": sum(after.get(p, (0, 0))[0] for p in changed),
        "noop_new_run": not again.reused,
        **kept,
    }
    if "history" in batchml.connect.__code__.co_varnames:
        result.update(_history_lookups(project, times, points))
    return result


def _reader(path: str, threads: int | None, memory: str) -> duckdb.DuckDBPyConnection:
    """A read-only connection to ``path`` with batchml's reader settings (``threads``: its default)."""
    from batchml.serving import readers

    caps = {"memory_limit": memory, "threads": threads or readers.READER_THREADS}
    return duckdb.connect(path, read_only=True, config={**readers.READER_CONFIG, **caps})


def _points(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, list[float]]:
    """Seconds of each point lookup of ``ids``, as SQL on the view and as ``batchml.lookup`` of one id,
    taken in turn (so both see the same load); the first 200 of each warm the index and row groups."""
    import batchml

    seconds: dict[str, list[float]] = {"sql": [], "api": []}
    for i, entity in enumerate(ids):
        start = time.perf_counter()
        found = con.execute(POINT, [MODEL, entity]).fetchall()
        middle = time.perf_counter()
        table = batchml.lookup(con, MODEL, [entity])
        end = time.perf_counter()
        assert len(found) == 1 and table.num_rows == 1, entity
        if i >= 200:
            seconds["sql"].append(middle - start)
            seconds["api"].append(end - middle)
    return seconds


def _point_figures(seconds: dict[str, list[float]]) -> dict[str, float]:
    return {f"{kind}_{k}": v for kind, s in seconds.items() for k, v in _quantiles(s).items()}


def child_lookups(path: str, points: int, threads: int | None, memory: str) -> dict[str, Any]:
    """Point and batch lookup timings on the serving file at ``path`` (opened read-only, as readers do)."""
    import batchml

    con = _reader(path, threads, memory)
    ids = [str(r[0]) for r in con.execute(SAMPLE.format(rows=points + 200)).fetchall()]
    seconds = _points(con, ids)
    result: dict[str, Any] = {"seconds": sum(seconds["sql"]), **_point_figures(seconds)}
    # The same ids again: each index and row block they read is loaded by now, as in a reader that has
    # served long enough to have read every block once (the first read of a block copies it from the file).
    result.update({f"warm_{k}": v for k, v in _point_figures(_points(con, ids)).items()})
    # And `batchml.lookup` alone, as an app that only looks ids up asks: a DuckDB query just before each
    # mapped lookup (the pass above) triples what the lookup itself takes (caches the query evicted).
    alone = []
    for entity in ids:
        start = time.perf_counter()
        batchml.lookup(con, MODEL, [entity])
        alone.append(time.perf_counter() - start)
    result.update({f"alone_api_{k}": v for k, v in _quantiles(alone).items()})
    for size in BATCHES:
        asked = [str(r[0]) for r in con.execute(SAMPLE.format(rows=size - size // 10)).fetchall()]
        asked += [f"missing-{i}" for i in range(size // 10)]
        random.Random(7).shuffle(asked)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            table = batchml.lookup(con, MODEL, asked)
            best = min(best, time.perf_counter() - start)
        assert table.num_rows == size - size // 10
        result[f"batch_{size}_ids_per_s"] = size / best
    return result


def child_reader(
    path: str, points: int, threads: int | None, memory: str, start_at: float, seed: int
) -> dict[str, Any]:
    """One of several reader processes: point lookups from ``start_at`` on (all readers at once)."""
    con = _reader(path, threads, memory)
    ids = [str(r[0]) for r in con.execute(SAMPLE.format(rows=points + 200)).fetchall()]
    random.Random(seed).shuffle(ids)
    time.sleep(max(0.0, start_at - time.time()))
    begin = time.perf_counter()
    seconds = _points(con, ids)
    return {"seconds": time.perf_counter() - begin, **seconds}


def parallel_readers(
    path: str, points: int, threads: int | None, memory: str, readers: int
) -> dict[str, Any]:
    """``readers`` processes, each with its own kept-open connection, looking up at the same time."""
    start_at = time.time() + 10 + readers  # every reader connected and sampled before the first lookup
    args = [str(points), str(threads or 0), memory, repr(start_at)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "child", "--child", "reader", path, *args, str(i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(readers)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a reader failed: exit codes {[p.returncode for p in procs]}")
    merged = {kind: [s for r in results for s in r[kind]] for kind in ("sql", "api")}
    late = max(r["seconds"] for r in results) - min(r["seconds"] for r in results)
    return {"readers": readers, "spread_s": late, **_point_figures(merged)}


def child_publish_one(toml: str, dataset: str) -> dict[str, Any]:
    """Score and publish one run; the publish's seconds."""
    import batchml

    project = batchml.Project.open(toml)
    run = batchml.score(project, MODEL, alias="champion", dataset=dataset)
    start = time.perf_counter()
    path = batchml.publish(project, MODEL, run.run_id)
    return {"seconds": time.perf_counter() - start, "file_mib": path.stat().st_size / 2**20}


#: What the benchmark makes in the workdir (each with the lookup files it may get), removed at the end.
WITHOUT_INDEX = "serving_without_index.duckdb"  # "zone maps only"
ART_LINK = "serving_art_index.duckdb"  # "ART index": the serving file, no lookup files beside this name
FILES_LINK = "serving_lookup_files.duckdb"  # "lookup files" (--serving): the file's own, or written


def lookup_sidecars(path: Path) -> list[Path]:
    """The lookup files beside the serving file at ``path`` (their names start with its name)."""
    from batchml.serving.lookup_files import SUFFIX

    return sorted(path.parent.glob(f"{glob.escape(path.name)}.*.{SUFFIX}.*"))


def _mib(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 2**20


def _remove(path: Path) -> None:
    """Remove a file the benchmark made, and its lookup files."""
    for sidecar in lookup_sidecars(path):
        sidecar.unlink()
    path.unlink(missing_ok=True)


def linked(path: Path, link: Path) -> Path:
    """The serving file at ``path`` under the name ``link`` (replaced), without lookup files beside it: a hard
    link (no copy of a 100M-row file; not chmod-ed, it is the same inode), or a copy across filesystems."""
    _remove(link)
    try:
        os.link(path, link)
    except OSError:
        shutil.copy(path, link)
    return link


def with_lookup_files(path: Path, link: Path) -> float | None:
    """``linked(path, link)`` with lookup files beside it: ``path``'s own if it has them (linked; copied
    across filesystems, where a hard link cannot go), else written; the seconds the writing took, or None."""
    from batchml.serving.lookup_files import write_lookup_files

    own = lookup_sidecars(path)
    linked(path, link)
    if own and not link.samefile(path):  # a copy: so are the lookup files
        for sidecar in own:
            shutil.copy(sidecar, link.with_name(link.name + sidecar.name[len(path.name) :]))
        return None
    start = time.perf_counter()
    write_lookup_files(link, link, path if own else None)
    return None if own else time.perf_counter() - start


def without_indexes(path: Path, workdir: Path) -> Path:
    """A copy of the serving file at ``path`` with every index dropped (the same rows, sorted), and no
    lookup files beside it (a previous run's are removed)."""
    copy = workdir / WITHOUT_INDEX
    _remove(copy)
    shutil.copy(path, copy)
    copy.chmod(0o644)
    with duckdb.connect(str(copy)) as con:
        for (name,) in con.execute("SELECT index_name FROM duckdb_indexes()").fetchall():
            con.execute(f'DROP INDEX "{name}"')
        con.execute("CHECKPOINT")
    return copy


def keep_file(served: Path, keep: Path) -> None:
    """Move the published file to ``keep`` with its lookup files, renamed for it (``--serving keep`` finds
    them); those of a file kept there before go."""
    sidecars = lookup_sidecars(served)
    _remove(keep)
    shutil.move(served, keep)
    for sidecar in sidecars:
        shutil.move(sidecar, keep.with_name(keep.name + sidecar.name[len(served.name) :]))


def check_layouts(layouts: dict[str, Path]) -> None:
    """A layout has lookup files beside it if and only if it is "lookup files": else it measures another."""
    for name, path in layouts.items():
        if bool(lookup_sidecars(path)) != (name == "lookup files"):
            state = "has" if lookup_sidecars(path) else "has no"
            raise RuntimeError(f"layout {name!r}: {path} {state} lookup files beside it")


def _window(steps: list[dict[str, Any]], n: int, key: str) -> float:
    """The median of `key` over the 3 publishes ending at publish n (the first 3 for n = 1)."""
    end = max(n, 3)
    return statistics.median(s[key] for s in steps[end - 3 : end])


def report_publishes(r: dict[str, Any], meta: dict[str, Any]) -> str:
    """Publish wall and CPU seconds (median of 3) and file size at each checkpoint, against the first."""
    steps = r["steps"]
    wall1, cpu1, mib1 = (_window(steps, 1, k) for k in ("seconds", "cpu_seconds", "file_mib"))
    lines = [
        f"rows/run={meta['rows']:,}  publishes={meta['publishes']}  {meta['cores']} cores, "
        f"duckdb {meta['duckdb']}",
        f"{'publish #':>10}{'wall s':>8}{'x 1st':>7}{'CPU s':>8}{'x 1st':>7}{'file MiB':>10}{'x 1st':>7}",
    ]
    for n in sorted({c for c in CHECKPOINTS if c <= len(steps)} | {len(steps)}):
        wall, cpu, mib = (_window(steps, n, k) for k in ("seconds", "cpu_seconds", "file_mib"))
        lines.append(
            f"{n:>10}{wall:>8.2f}{wall / wall1:>7.2f}{cpu:>8.2f}{cpu / cpu1:>7.2f}"
            f"{mib:>10.1f}{mib / mib1:>7.2f}"
        )
    lines.append(
        f"no-op (publish + score again): {r['noop_seconds']:.2f} s, {r['noop_files_changed']} files / "
        f"{r['noop_bytes_changed']} bytes changed, new run: {r['noop_new_run']}"
    )
    if "serving_files" in r:
        lines.append(
            f"serving folder after {len(steps)} publishes in {r['loop_seconds']:.0f} s: "
            f"{r['serving_files']} files, {r['serving_mib']:.0f} MiB (the current file and those replaced "
            f"within the last {r['grace_seconds']:.0f} s)"
            + (f", and {r['sidecar_mib']:.0f} MiB of their sidecars" if "sidecar_mib" in r else "")
        )
    if "at_lookup_p50_ms" in r:
        lines.append(
            f"history ({meta['publishes']} runs): connect {r['history_connect_ms']:.0f} ms; lookup(at=T) "
            f"p50 {r['at_lookup_p50_ms']:.1f} ms p99 {r['at_lookup_p99_ms']:.1f} ms; prediction_at SQL "
            f"p50 {r['at_sql_p50_ms']:.1f} ms p99 {r['at_sql_p99_ms']:.1f} ms"
        )
    return "\n".join(lines)


def report_lookups(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """Point lookups (SQL on the view, `batchml.lookup` of one id) and batch lookups per layout."""
    published = f"publish {meta['publish_seconds']:.1f} s, " if meta.get("publish_seconds") else ""
    written = meta.get("lookup_write_seconds")
    files = f"lookup files {meta['lookup_mib']:.0f} MiB" + (
        f" (written in {written:.1f} s)" if written is not None else ""
    )
    lines = [
        f"rows={meta['rows']:,}  point lookups={meta['points']:,}  {meta['cores']} cores, duckdb "
        f"{meta['duckdb']}, reader threads {meta['threads']}, memory_limit {meta['memory_limit']}; "
        f"{published}file {meta['file_mib']:.0f} MiB, {files}",
        f"{'layout':<16}{'SQL p50':>9}{'p99 ms':>8}{'lookup p50':>12}{'p99 ms':>8}"
        + "".join(f"{f'{n // 1000}k ids/s':>13}" for n in BATCHES),
    ]
    for name, r in results.items():
        if name == "parallel":
            continue
        lines.append(
            f"{name:<16}{r['sql_p50_ms']:>9.3f}{r['sql_p99_ms']:>8.3f}{r['api_p50_ms']:>12.3f}"
            f"{r['api_p99_ms']:>8.3f}" + "".join(f"{r[f'batch_{n}_ids_per_s']:>13,.0f}" for n in BATCHES)
        )
        if "warm_sql_p50_ms" in r:
            lines.append(
                f"{'  same ids again':<16}{r['warm_sql_p50_ms']:>9.3f}{r['warm_sql_p99_ms']:>8.3f}"
                f"{r['warm_api_p50_ms']:>12.3f}{r['warm_api_p99_ms']:>8.3f}"
            )
        if "alone_api_p50_ms" in r:
            lines.append(
                f"{'  lookup alone':<16}{'':>17}{r['alone_api_p50_ms']:>12.3f}{r['alone_api_p99_ms']:>8.3f}"
            )
    if "parallel" in results:
        r = results["parallel"]
        lines.append(
            f"{r['readers']} readers at once{'':<0}{r['sql_p50_ms']:>8.3f}{r['sql_p99_ms']:>8.3f}"
            f"{r['api_p50_ms']:>12.3f}{r['api_p99_ms']:>8.3f}  (each its own process and connection; "
            f"finish spread {r['spread_s']:.1f} s)"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse arguments; in child mode run one measurement, otherwise set up, measure and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["publishes", "lookups", "child"])
    parser.add_argument("--rows", type=int, default=None, help="1M for publishes, 10M for lookups")
    parser.add_argument("--publishes", type=int, default=100)
    parser.add_argument("--trees", type=int, default=5, help="the booster is not what is measured here")
    parser.add_argument("--points", type=int, default=2_000, help="point lookups per measurement")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--serving", type=Path, help="lookups on this serving file (no setup)")
    parser.add_argument("--threads", type=int, default=0, help="reader threads (0: batchml's default)")
    parser.add_argument(
        "--memory-limit", help="[serving] reader_memory_limit: the readers' memory and the index rule (2GB)"
    )
    parser.add_argument("--readers", type=int, default=8, help="reader processes at once (0: none)")
    parser.add_argument("--keep", type=Path, help="lookups: publish, keep the file there, measure nothing")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "child":
        kind, *rest = args.child
        result = (
            child_publishes(rest[0], rest[1], int(rest[2]), int(rest[3]))
            if kind == "publishes"
            else child_publish_one(rest[0], rest[1])
            if kind == "publish"
            else child_reader(
                rest[0], int(rest[1]), int(rest[2]) or None, rest[3], float(rest[4]), int(rest[5])
            )
            if kind == "reader"
            else child_lookups(rest[0], int(rest[1]), int(rest[2]) or None, rest[3])
        )
        print(json.dumps({**result, "peak_rss_mib": peak_rss_mib()}, default=str))
        return

    if args.mode == "lookups" and args.serving:  # an existing file: no setup, no copy without indexes
        measure_serving_file(args)
        return

    import batchml

    rows = args.rows or (1_000_000 if args.mode == "publishes" else 10_000_000)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(workdir, rows, args.seed)
    setup = setup_batchml(workdir, data, train_baseline(data, args.trees, workdir))
    if args.memory_limit:  # the serving build indexes what readers with that limit can hold
        with open(setup["toml"], "a", encoding="utf-8") as toml:
            toml.write(f'\n[serving]\nreader_memory_limit = "{args.memory_limit}"\n')
    try:
        if args.mode == "publishes":
            meta = _meta(args, rows, publishes=args.publishes)
            child = ["publishes", setup["toml"], setup["dataset"], str(args.publishes), str(args.points)]
            result: dict[str, Any] = run_child(__file__, ["child", "--child", *child])
            text = report_publishes(result, meta)
        else:
            published = run_child(__file__, ["child", "--child", "publish", setup["toml"], setup["dataset"]])
            meta = _meta(args, rows, publish_seconds=published["seconds"], file_mib=published["file_mib"])
            served = batchml.database_path(batchml.Project.open(setup["toml"])).resolve()
            meta["lookup_mib"] = _mib(lookup_sidecars(served))
            if args.keep:  # a 100M-row file takes minutes to build: keep it, measure it with --serving
                keep_file(served, args.keep.resolve())
                print(
                    f"published in {published['seconds']:.1f} s (score + publish peak RSS "
                    f"{published['peak_rss_mib']:.0f} MiB), kept at {args.keep} with "
                    f"{meta['lookup_mib']:.0f} MiB of lookup files"
                )
                return
            layouts = {
                "zone maps only": without_indexes(served, workdir),
                "ART index": linked(served, workdir / ART_LINK),
                "lookup files": served,
            }
            check_layouts(layouts)
            result = measure_lookups(args, layouts)
            text = report_lookups(result, meta)
    finally:
        shutil.rmtree(setup["project"])
        _clean(workdir)
    _report(args, rows, meta, result, text)


def measure_serving_file(args: argparse.Namespace) -> None:
    """``--serving FILE``: "ART index" and "lookup files" on FILE's rows, through links in the workdir."""
    served, workdir = args.serving.resolve(), args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if served.parent == workdir and served.name in (WITHOUT_INDEX, ART_LINK, FILES_LINK):
        sys.exit(f"--serving {served} is invalid: the benchmark replaces that file; move or rename it")
    with duckdb.connect(str(served), read_only=True) as con:
        (rows,) = con.execute("SELECT count(*) FROM predictions").fetchone() or (0,)
    try:
        art = linked(served, workdir / ART_LINK) if lookup_sidecars(served) else served
        written = with_lookup_files(served, workdir / FILES_LINK)
        if written is not None:
            print(f"{served.name} has no lookup files: wrote them beside a link of it in {written:.1f} s")
        files = lookup_sidecars(workdir / FILES_LINK)
        meta = _meta(args, rows, publish_seconds=None, file_mib=served.stat().st_size / 2**20,
                     lookup_mib=_mib(files), lookup_write_seconds=written)  # fmt: skip
        layouts = {"ART index": art, "lookup files": workdir / FILES_LINK}
        check_layouts(layouts)
        result = measure_lookups(args, layouts)
    finally:
        _clean(workdir)
    _report(args, rows, meta, result, report_lookups(result, meta))


def _clean(workdir: Path) -> None:
    """Remove what the benchmark made in the workdir: links, the copy without indexes, their lookup files."""
    for name in (WITHOUT_INDEX, ART_LINK, FILES_LINK):
        _remove(workdir / name)


def _memory(args: argparse.Namespace) -> str:
    import batchml.serving.readers as readers

    return str(args.memory_limit or readers.READER_MEMORY_LIMIT)


def _meta(args: argparse.Namespace, rows: int, **more: Any) -> dict[str, Any]:
    import batchml.serving.readers as readers

    threads = args.threads or readers.READER_THREADS
    load = os.getloadavg()[0]
    return {"rows": rows, "points": args.points, "cores": os.cpu_count(), "duckdb": duckdb.__version__,
            "threads": threads, "memory_limit": _memory(args), "load_1min": load, **more}  # fmt: skip


def measure_lookups(args: argparse.Namespace, layouts: dict[str, Path]) -> dict[str, Any]:
    """Lookups on each layout's file, one reader process; then ``--readers`` at once on the last one."""
    points, threads, memory = str(args.points), str(args.threads), _memory(args)
    result: dict[str, Any] = {
        name: run_child(__file__, ["child", "--child", "lookups", str(path), points, threads, memory])
        for name, path in layouts.items()
    }
    if args.readers:
        last = str(list(layouts.values())[-1])
        result["parallel"] = parallel_readers(last, args.points, args.threads, memory, args.readers)
    return result


def _report(args: argparse.Namespace, rows: int, meta: dict[str, Any], result: Any, text: str) -> None:
    meta["load_1min_after"] = os.getloadavg()[0]
    print(text)
    print(f"load average (1 min) before {meta['load_1min']:.1f}, after {meta['load_1min_after']:.1f}")
    out = args.workdir.resolve() / f"serving_{args.mode}_{rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": result}, indent=2, default=str))


if __name__ == "__main__":
    main()
