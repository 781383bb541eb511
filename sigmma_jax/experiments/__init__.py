"""The paper's experiments (SIGMMA Tables 1-4): methods as named config changes (`methods`), the suite
of runs over one shard set (`suite`), the tables (`tables`). The command is
`python -m sigmma_jax.experiments` (`__main__.py`)."""
