"""Tests of tasks/cli/: one file per module."""
