"""The paper's experiments in one command:

  python -m sigmma_jax.experiments --config=configs/demo.py --workdir=W

runs every method x fold x seed of config.suite (baselines, SIGMMA, the Table 4 ablations, Table 3
per backbone in suite.backbones), each in W/runs/..., over one shard set in W/shards, skipping runs
already finished, and writes W/tables.md, W/tables.csv, W/tables.json and W/plots/table*.png.
"""

from absl import flags

from sigmma_jax import cli
from sigmma_jax.experiments import suite

FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    cli.required("config", "workdir")
    suite.run_suite(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
