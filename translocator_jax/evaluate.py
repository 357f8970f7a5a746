"""`python -m translocator_jax.evaluate ...`: the same command as translocator-eval (translocator_jax/eval/main.py),
kept under the name the README and published instructions use."""
import sys

from translocator_jax.eval.main import main

if __name__ == "__main__":
  sys.exit(main())
