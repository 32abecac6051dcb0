"""Run dipod's benchmarks: `python benchmarks/run.py [--quick] [NAME ...]`.

Each benchmark lives in `benchmarks/bench_<NAME>.py` and exposes `run(quick: bool) -> dict` returning
`{"figures": {KEY: number}, "reference": "what it was compared with"}`. Every figure is a ratio or a
difference against a reference measured in the same run, since absolute times depend on the machine.
Results go to `benchmarks/results/<NAME>.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> dict[str, Path]:
    """Benchmark name -> file."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="keep each benchmark under about a minute")
    args = parser.parse_args(argv)
    available = discover()
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in args.names or list(available):
        start = time.perf_counter()
        result = load(available[name]).run(quick=args.quick)
        record = {"name": name, "figures": result["figures"], "reference": result["reference"], "quick": args.quick}
        tmp = RESULTS / f"{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(RESULTS / f"{name}.json")
        for key, value in result["figures"].items():
            print(f"{name}.{key} = {value:.4g}")
        print(f"  ({name}: reference = {result['reference']}; {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
