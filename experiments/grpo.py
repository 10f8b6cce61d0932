"""GRPO main job (placeholder until the GRPO trainer lands)."""
import sys


def main():
  sys.exit("alignax.experiments.grpo is not built yet: the GRPO trainer "
           "(issue 6) has not landed. See README.md for what works today.")


if __name__ == "__main__":
  main()
