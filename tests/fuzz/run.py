"""``make fuzz``: a long fuzzing run of every decoder and verifier (tests/fuzz_targets.py).

With atheris (libFuzzer, coverage-guided, bus/ instrumented) when it is installed; otherwise
Hypothesis with many examples. The first input byte picks the target, the rest is its input;
the corpus starts from valid seeds of every kind. Any exception that is not a BusError is a
crash: libFuzzer stops and saves the input (crash-*), and this exits non-zero.

    python -m tests.fuzz.run --runs 1000000 [--engine atheris|hypothesis]

Prints one line ``fuzz: N inputs, 0 crashes (...)`` at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FINAL_RE = re.compile(r"Done (\d+) runs in (\d+) second")
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "fuzz"  # crash-* inputs land here


def _atheris_child(runs: int, corpus: str, max_len: int) -> None:
    import atheris  # noqa: PLC0415 - only in the fuzzing child

    with atheris.instrument_imports(include=["bus"]):
        from tests.fuzz_targets import TARGETS, run  # noqa: PLC0415

    targets = [TARGETS[n] for n in sorted(TARGETS)]

    def one_input(data: bytes) -> None:
        if data:
            run(targets[data[0] % len(targets)], data[1:])

    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-max_len={max_len}", "-print_final_stats=1",
         "-rss_limit_mb=4096", f"-artifact_prefix={ARTIFACTS}/", corpus],
        one_input,
    )  # fmt: skip
    atheris.Fuzz()


def _write_corpus(directory: Path) -> int:
    from tests.fuzz_targets import SEEDS, TARGETS  # noqa: PLC0415

    names = sorted(TARGETS)
    count = 0
    for i, _ in enumerate(names):
        for j, seed in enumerate(SEEDS["bytes"]):
            (directory / f"seed-{i}-{j}").write_bytes(bytes([i]) + seed)
            count += 1
    return count


def run_atheris(runs: int, max_len: int) -> int:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="obus-fuzz-") as tmp:
        corpus = Path(tmp)
        seeds = _write_corpus(corpus)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "tests.fuzz.run", "--child", "--runs", str(runs),
             "--max-len", str(max_len), "--corpus", str(corpus)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        match = FINAL_RE.search(out)
        done = int(match.group(1)) if match else 0
        tail = "\n".join(out.splitlines()[-25:])
        if proc.returncode != 0 or done < runs:
            print(tail)
            print(f"fuzz: CRASH or early stop after {done} inputs (exit {proc.returncode})")
            return 1
        print(tail)
        print(
            f"fuzz: {done} inputs, 0 crashes (atheris/libFuzzer, {seeds} seeds, "
            f"{time.monotonic() - started:.0f}s)"
        )
        return 0


def run_hypothesis(runs: int) -> int:
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415

    from tests.fuzz_targets import TARGETS, run  # noqa: PLC0415
    from tests.unit.test_fuzz_invariant import inputs  # noqa: PLC0415

    per_target = max(1, runs // len(TARGETS))
    total = 0
    started = time.monotonic()
    for name in sorted(TARGETS):
        counter = [0]

        @settings(
            max_examples=per_target, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(data=inputs())
        def check(data: bytes, target_name: str = name, n: list[int] = counter) -> None:
            n[0] += 1
            run(TARGETS[target_name], data)

        check()
        total += counter[0]
        print(f"  {name}: {counter[0]} inputs", flush=True)
    print(f"fuzz: {total} inputs, 0 crashes (hypothesis, {time.monotonic() - started:.0f}s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--engine", choices=["auto", "atheris", "hypothesis"], default="auto")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _atheris_child(args.runs, args.corpus, args.max_len)
        return 0
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    if engine == "atheris":
        return run_atheris(args.runs, args.max_len)
    return run_hypothesis(args.runs)


if __name__ == "__main__":
    sys.exit(main())
