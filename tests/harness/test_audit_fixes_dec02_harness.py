"""Regression test of the harness audit (December 2): a zero oracle accuracy."""

from __future__ import annotations

import math

import torch

from fastunlearn.harness.runner import _method_entry


def test_zero_oracle_test_accuracy_leaves_the_final_score_undefined() -> None:
    # the oracles' mean test accuracy 0 (a test set of a class no model predicts) made
    # final_score raise after every training and method run: nothing was scored or written
    g = torch.Generator().manual_seed(0)
    S, C, seeds = 8, 3, 3
    forget_labels = torch.arange(S) % C
    oracle_forget = torch.randn(S, 4, C, generator=g, dtype=torch.float64)
    logits = [{"forget": torch.randn(S, C, generator=g), "test": torch.randn(5, C, generator=g)}
              for _ in range(seeds)]
    records = [{"seed": s, "status": "ok", "seconds": 1.0, "forget_accuracy": 0.5,
                "unlearning_accuracy": 0.5, "retain_accuracy": 0.9, "test_accuracy": 0.0}
               for s in range(seeds)]
    oracles = {"forget_accuracy": 0.4, "unlearning_accuracy": 0.6, "retain_accuracy": 0.95,
               "test_accuracy": 0.0}
    entry = _method_entry(records, logits, oracle_forget, forget_labels, oracles, 10.0,
                          torch.zeros(5, dtype=torch.long), [])
    assert entry["status"] == "ok"
    assert 0.0 <= entry["competition_forget_score"] <= 1.0
    assert math.isnan(entry["competition_final_score"])
    assert math.isnan(entry["competition"]["final_score"])
    assert "oracles' mean test accuracy is 0" in entry["privacy_note"]
    assert "epsilon_hat" in entry
