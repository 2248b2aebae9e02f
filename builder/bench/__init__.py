"""Measuring: ``inv bench`` (``bench``), the boot trials and the power-cut soak (``trials``,
``powercut``). Not tests: figures for the docs and the issues."""
