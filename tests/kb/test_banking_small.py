"""A quick sanity run on a small Banking77 subset (the full run is the benchmark)."""

import importlib.util
import sys
from pathlib import Path

import pytest

from kb.service import KnowledgeBase

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "datasets" / "banking77"

# The benchmark is a script, not a package: load its helpers by path.
_spec = importlib.util.spec_from_file_location("kb_banking77", ROOT / "benchmarks/kb_banking77.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["kb_banking77"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


@pytest.mark.skipif(not (DATA / "train.csv").exists(), reason="Banking77 not available")
def test_k10_on_20_intents() -> None:
    train = bench.load_rows(DATA / "train.csv")
    intents = sorted(bench.by_intent(train))[:20]
    train = [r for r in train if r[1] in intents]
    test = [r for r in bench.load_rows(DATA / "test.csv") if r[1] in intents]
    kb_rows, _ = bench.sample(train, 10, 0)
    kb = KnowledgeBase.from_articles(bench.make_articles(kb_rows))
    acc = bench.accuracy(bench.run_queries(kb, test))
    assert acc["top1"] >= 0.75
    assert acc["top3"] >= 0.9
    assert acc["ans_prec"] >= 0.9
