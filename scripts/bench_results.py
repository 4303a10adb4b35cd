"""Reads the load generator's results for the benchmark scripts (bench-vs-pebble.sh,
bench-postgres.sh): one JSON object per run in WORK/res-NAME-C.json."""
import json


def load(work, name, c):
    """The run's figures, or None when it stalled (no JSON, or {"stalled": true})."""
    raw = open(f"{work}/res-{name}-{c}.json").read().strip().splitlines()
    r = json.loads(raw[-1]) if raw else {"stalled": True}
    return None if r.get("stalled") else r
