"""Tools around the model: weight conversion, attention maps, benchmarks."""
