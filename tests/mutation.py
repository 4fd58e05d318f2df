"""Mutation testing of one section of the script with cosmic-ray.

    python3 tests/mutation.py SECTION      # crypto, store or namespaces
    python3 tests/mutation.py SECTION --report

cosmic-ray mutates ``.py`` files only, so the script is copied to
``build/mutation/SECTION/iamsorry.py`` and the tests are pointed at the copy
with ``IAM_SORRY_SCRIPT`` (tests/conftest.py honours it, for in-process and
subprocess runs alike).  Only mutants on the section's own lines are run,
one at a time, each against the section's tests; the first failing test
kills a mutant.  Not run in CI: a section takes tens of minutes on 2 cores.
cosmic-ray goes in its own virtualenv (its dependencies are not the
project's); its bin folder must be on PATH."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Section banner title (its start) -> the tests that exercise it.
SECTIONS = {
    "crypto": ("Crypto: HKDF / AES-GCM", ["tests/test_crypto.py"]),
    # Without the slow concurrency tests (random kills, 50 writers) and those
    # that need a manager in moto: each mutant then costs seconds, not half a minute.
    "store": ("Profile store:", ["tests/test_store.py", "-k", "not (random_points or fifty_parallel or manager)"]),
    "namespaces": (
        "Namespaces and policies",
        [
            "tests/test_namespaces.py",
            "tests/test_policies.py",
            "tests/test_minting.py::test_namespace_refusals_create_nothing",
        ],
    ),
}


def section_lines(script: str, title: str) -> tuple[int, int]:
    """First and last line (1-based) of the section whose banner starts with ``title``."""
    lines = script.splitlines()
    banners = [i for i, line in enumerate(lines) if re.match(r"# \S.* #+$", line) and lines[i - 1].startswith("####")]
    for n, i in enumerate(banners):
        if lines[i].startswith("# " + title):
            end = banners[n + 1] - 2 if n + 1 < len(banners) else len(lines)
            return i + 2, end
    raise SystemExit(f"no section titled {title!r}")


# One counterpart per binary operator (cosmic-ray makes eleven for each), and
# no ``==`` -> ``is`` (small ints and short strings are interned: noise).
KEEP_BINARY = "|".join(
    ("Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "Mod_Mul", "FloorDiv_Mul")
    + ("BitOr_BitAnd", "BitAnd_BitOr", "BitXor_BitOr", "LShift_RShift")
)
EXCLUDED_OPERATORS = [
    rf"core/ReplaceBinaryOperator_(?!(?:{KEEP_BINARY})$)",
    r"core/ReplaceComparisonOperator_(?:Eq|NotEq|Lt|LtE|Gt|GtE|In|NotIn)_(?:Is|IsNot)$",
]


def annotation_spans(script: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the script's annotations are.  Under ``from __future__ import
    annotations`` they are never evaluated: a mutant there is equivalent."""
    spans = []
    for node in ast.walk(ast.parse(script)):
        found: list[ast.expr | None] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node.returns)
            a = node.args
            found += [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x]
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for ann in found:
            if ann is not None and ann.end_lineno is not None and ann.end_col_offset is not None:
                spans.append(((ann.lineno, ann.col_offset), (ann.end_lineno, ann.end_col_offset)))
    return spans


def skip_mutants(db: Path, script: str, shard: int, shards: int) -> int:
    """Before exec, record as skipped the mutants inside annotations
    (equivalent) and those of other shards; return how many are equivalent."""
    import sqlite3

    spans = annotation_spans(script)
    con = sqlite3.connect(db)
    with con:
        rows = con.execute(
            "SELECT m.job_id, m.start_pos_row, m.start_pos_col FROM mutation_specs m "
            "LEFT JOIN work_results r ON r.job_id = m.job_id WHERE r.job_id IS NULL "
            "ORDER BY m.start_pos_row, m.start_pos_col, m.operator_name, m.occurrence"  # job ids are random
        ).fetchall()
        equivalent = [job for job, row, col in rows if any(a <= (row, col) < b for a, b in spans)]
        others = [job for n, (job, _, _) in enumerate(rows) if n % shards != shard - 1 and job not in equivalent]
        con.executemany(
            "INSERT INTO work_results (job_id, worker_outcome, output) VALUES (?, 'SKIPPED', ?)",
            [(job, "equivalent: inside an annotation, never evaluated") for job in equivalent]
            + [(job, f"another shard than {shard}/{shards}") for job in others],
        )
    con.close()
    return len(equivalent)


def config(work: Path, first: int, last: int, tests: list[str]) -> str:
    module = work / "iamsorry.py"
    command = [
        "env",
        f"IAM_SORRY_SCRIPT={module}",
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={work / 'tmp'}",  # two sections may run at once
        *tests,
    ]
    return (
        "[cosmic-ray]\n"
        f'module-path = "{module}"\n'
        "timeout = 90.0\n"  # a mutant that makes a test wait on a lock is killed, not waited for
        "excluded-modules = []\n"
        f"test-command = {shlex.join(command)!r}\n"
        "\n[cosmic-ray.distributor]\n"
        'name = "local"\n'
        "\n[cosmic-ray.filters.line-filter]\n"
        f'lines = {{ "{module}" = ["{first}-{last}"] }}\n'
        "\n[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {EXCLUDED_OPERATORS!r}\n"
    )


def run(*argv: str) -> None:
    subprocess.run(argv, cwd=ROOT, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--report", action="store_true", help="only print the report of the last run")
    parser.add_argument("--shard", default="1/1", help="I/N: run every Nth mutant from the Ith (two at once: 1/2, 2/2)")
    args = parser.parse_args()
    shard, shards = (int(n) for n in args.shard.split("/"))
    work = ROOT / "build" / "mutation" / (args.section if shards == 1 else f"{args.section}-{shard}of{shards}")
    toml, db = work / "cosmic-ray.toml", work / "session.sqlite"
    if not args.report:
        title, tests = SECTIONS[args.section]
        if shutil.which("cosmic-ray") is None:
            raise SystemExit("cosmic-ray is not on PATH (see the README's Mutation testing)")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        script = (ROOT / "iam-sorry").read_text()
        (work / "iamsorry.py").write_text(script)
        first, last = section_lines(script, title)
        toml.write_text(config(work, first, last, tests))
        run("cosmic-ray", "init", str(toml), str(db))
        run("cr-filter-lines", "--config", str(toml), str(db))
        run("cr-filter-operators", str(db), str(toml))
        print(f"{skip_mutants(db, script, shard, shards)} mutants inside annotations skipped as equivalent")
        run("cosmic-ray", "baseline", str(toml))
        run("cosmic-ray", "exec", str(toml), str(db))
    run("cr-report", "--show-pending", str(db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
