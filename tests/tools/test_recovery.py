"""The recovery benchmark, on the tiny config: SIGKILLed during preprocessing, in training between
checkpoints, during an asynchronous checkpoint write and during the final evaluation, a run rerun
in its workdir ends with the numbers of an uninterrupted run (docs/benchmarks.md has 20 kills of
the demo)."""

import json

from support.configs import tiny_config

from sigmma_jax.tools.bench import recovery


def test_four_kills_resume_to_identical_numbers(tmp_path):
    config = tiny_config()
    config.train.update(steps=6, checkpoint_every=2, log_every=1)
    config.evals = ("retrieval",)
    phases = ["preprocess", "train", "checkpoint", "final_eval"]
    r = recovery.measure(config, tmp_path, phases, seed=0)
    assert [k["phase"] for k in r["kills"]] == phases
    assert all(k["killed"] for k in r["kills"]), r["kills"]
    # Each kill landed where it aimed (read from the log and the workdir at the kill); with a save
    # every 2 steps, a kill in training may find the last save's write still in flight.
    landed = [k["landed"] for k in r["kills"]]
    assert landed[0] == "preprocess" and landed[2:] == ["checkpoint", "final_eval"], r["kills"]
    assert landed[1] in ("train", "checkpoint"), r["kills"]
    assert r["kills"][2]["write_in_flight"], r["kills"][2]
    # The rerun after the kill in the write resumed from the checkpoint before it (or afresh).
    assert r["kills"][2]["rerun_resumed_from"] in (None, 2, 4)
    c = r["comparison"]
    assert c["identical"], c
    assert c["logged_losses"] == 6 * 4 and c["numbers"] > 100
    # The comparison sees a difference where there is one.
    path = tmp_path / "recovered" / "metrics.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    rows[3]["loss_meso"] += 1e-6
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    c = recovery.compare(tmp_path / "reference", tmp_path / "recovered")
    assert not c["identical"] and c["differ"] == 1
    assert c["first_differences"][0][0] == "metrics.jsonl/step 4/loss_meso"


def test_kills_are_spread_over_the_phases_in_order():
    assert recovery.phases_for(20) == (
        ["preprocess"] * 4
        + ["initial_eval"] * 2
        + ["train"] * 6
        + ["checkpoint"] * 5
        + ["final_eval"] * 3
    )
    assert len(recovery.phases_for(7)) == 7


def test_numbers_leave_timings_out():
    got = recovery.numbers({"a": {"R@5": 0.5, "eval_seconds": 3.0}, "b": [1, {"tiles_per_s": 9}]})
    assert got == {"/a/R@5": 0.5, "/b[0]": 1.0}
