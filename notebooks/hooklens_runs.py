"""Finding hooklens runs and reading their manifests, shared by the notebooks.

Runs live in outputs/<experiment>/<run>/ (or under $HOOKLENS_OUTPUTS); a run is complete once its
manifest.json is written, so only those count.
"""
import json
import os
from pathlib import Path


def outputs_dir() -> Path:
    default = Path(__file__).resolve().parent.parent / "outputs"
    return Path(os.environ.get("HOOKLENS_OUTPUTS", default))


def newest_run(experiment: str) -> Path:
    runs = sorted((outputs_dir() / experiment).glob("*/manifest.json"), key=os.path.getmtime)
    if not runs:
        raise FileNotFoundError(f"no complete {experiment} run under {outputs_dir()}: cargo run --bin {experiment}")
    return runs[-1].parent


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def describe(run: Path) -> dict:
    """Prints what produced the run and what each table's columns mean; returns the manifest."""
    m = manifest(run)
    model = m["model"]
    print(f"{run}\n{m['experiment']} on {model['name']} ({model['dtype']}, {model['device']}), hooklens {m['hooklens_version']} {m['git_commit'][:10]}")
    print("settings:", m["settings"])
    for table, schema in m["tables"].items():
        print(f"{table}: {schema['rows']} rows")
        for col in schema["columns"]:
            print(f"  {col['name']:<16} {col['dtype']:<5} {col['doc']}")
    return m
