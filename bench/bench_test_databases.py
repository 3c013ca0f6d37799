"""A worker's test database: built from the schema, or copied from a template (pytest-xdist).

    .venv/bin/python bench/bench_test_databases.py [--rounds 7] [--tables 40]

Side by side, in alternating rounds on one throwaway PostgreSQL: (a) what each worker did
before, a new database and `create_schema` (create_all of TABLES tables with an index and a
foreign key each), and (b) what the kit does under xdist, `CREATE DATABASE ... TEMPLATE` of a
database built once. Prints the median of each side and the median of the per-round ratios.
The migrations case (`apply_migrations`) costs more than create_all, so gains there are larger.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, Text

from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.testing.databases import create_kit_database, create_schema, throwaway_database
from mountaineer_db.testing.parallel import SharedRun


def metadata(tables: int) -> MetaData:
    schema = MetaData()
    previous = None
    for number in range(tables):
        columns = [Column("id", Integer, primary_key=True), Column("name", Text, index=True), Column("body", Text)]
        if previous is not None:
            columns.append(Column("parent_id", ForeignKey(f"{previous}.id")))
        Table(f"t{number}", schema, *columns)
        previous = f"t{number}"
    return schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tables", type=int, default=40)
    args = parser.parse_args()
    schema = metadata(args.tables)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.tables} tables; {args.rounds} rounds")
    with PostgresCluster.temporary() as server:
        # The template, as SharedRun.template makes it (built once, then marked a template).
        shared = SharedRun(Path(tempfile.mkdtemp(prefix="mdb-bench-")), "benchrun0")
        template = shared.template(server, "bench", lambda name: create_kit_database(server, name, schema))

        built: list[float] = []
        copied: list[float] = []
        ratios: list[float] = []

        def build() -> float:
            started = time.perf_counter()
            with throwaway_database(server) as database:
                create_schema(database.config(), schema)
                took = time.perf_counter() - started
            return took

        def copy() -> float:
            started = time.perf_counter()
            with throwaway_database(server, template=template):
                took = time.perf_counter() - started
            return took

        for round_number in range(args.rounds):
            sides = (build, copy) if round_number % 2 == 0 else (copy, build)
            results = {side.__name__: side() for side in sides}
            built.append(results["build"])
            copied.append(results["copy"])
            ratios.append(results["copy"] / results["build"])
        print(f"  create_all in a new database      median {statistics.median(built) * 1000:8.1f} ms")
        print(f"  copy of the template (xdist)      median {statistics.median(copied) * 1000:8.1f} ms")
        print(
            f"  copy / create_all: {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
