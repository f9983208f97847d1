"""Tests of tasks/core/: one file per module."""
