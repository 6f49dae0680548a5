"""``python -m diffguide``: the command line (also what ``torchrun -m diffguide`` runs)."""

from diffguide.cli import main

if __name__ == "__main__":
    main()
