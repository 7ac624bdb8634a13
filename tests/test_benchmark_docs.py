"""The performance figures in README.md and docs/performance.md are the saved benchmark run's, rendered by
benchmarks/tables.py: a hand edit, or a run replaced without regenerating the docs, fails here."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("benchmark_tables", ROOT / "benchmarks" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def test_the_docs_tables_are_their_runs():
    for key, doc in tables.DOCS.items():
        text = doc.read_text(encoding="utf-8")
        found = [m.group("key") for m in tables._SECTION.finditer(text)]
        assert key in found, f"{doc.name} has no generated section bench:{key}"
        assert tables.rewrite(text) == text, f"{doc.name} differs from its run: `python benchmarks/tables.py RUN --docs`"


def _run():
    def bench(name, median, **extra):
        return {"name": name, "group": "g", "params": {"backend": "cpp"}, "extra_info": extra,
                "stats": {"min": median * 0.9, "median": median, "max": median * 1.1, "rounds": 3}}
    return {"datetime": "2026-12-08T02:00:00", "machine_info": {"layerprof": {"version": "9.9", "machine": "m",
                                                                              "clock": "process CPU time", "threads": 1}},
            "benchmarks": [bench("test_smollm2[card]", 120.0, baseline_seconds=60.0, ratio=2.0, budget_steps=None,
                                 sweep_seconds=90.0, finalize_seconds=30.0),
                           bench("test_smollm2[budget]", 480.0, baseline_seconds=60.0, ratio=8.0, budget_steps=100),
                           bench("test_placement[16]", 0.01)]}


def test_tidy_rows_hold_one_figure_each():
    rows = tables.rows(_run(), "r.json")
    assert {r["metric"] for r in rows if r["benchmark"] == "test_placement[16]"} == {"seconds"}
    card = {r["metric"]: r for r in rows if r["benchmark"] == "test_smollm2[card]"}
    assert card["seconds"]["median"] == 120.0 and card["seconds"]["rounds"] == 3
    assert card["ratio"]["median"] == 2.0 and card["ratio"]["unit"] == "×" and card["sweep_seconds"]["unit"] == "s"
    assert all(set(r) == set(tables.FIELDS) for r in rows) and json.loads(card["seconds"]["params"]) == {"backend": "cpp"}


def test_the_readme_table_is_the_smollm2_benchmarks():
    text = tables.smollm2_table(_run())
    assert "| plain frozen forward + backward (input gradients only) | 60.0 | 1.00× |" in text
    assert "| `lp.profile()`: sweep + finalize | 120.0 | 2.00× |" in text
    assert "100 steps: + simulated LoRA and warm-up | 480.0 | 8.00× |" in text
    assert "sweep 90.0 s (1.50× plain), finalize 30.0 s" in text
