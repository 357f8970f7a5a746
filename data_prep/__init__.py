"""Command-line dataset preparation: `python -m data_prep.<script> --help` (logic in translocator_jax.data)."""
