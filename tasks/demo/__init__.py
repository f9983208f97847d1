"""The demo: the synthetic dataset in the challenge's format and the ablation of the techniques.

May import every layer below the CLI."""
