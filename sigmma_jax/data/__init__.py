"""Readers -> tiles and cell graphs -> shards -> the Grain loader: everything before the model."""
