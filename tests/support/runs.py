"""What a run writes, made up for tests of its readers and writers."""


def history(n=20):
    """A metrics.jsonl as a list of records, one per 10 steps."""
    return [
        {
            "step": 10 * i,
            "loss": 9.0 - 0.3 * i,
            "loss_micro": 3.1 - 0.1 * i,
            "loss_meso": 3.0 - 0.1 * i,
            "loss_macro": 2.9 - 0.1 * i,
            "temperature": 0.07 - 0.001 * i,
            "grad_norm": 1.0,
            "lr": 1e-4,
        }
        for i in range(n)
    ]
