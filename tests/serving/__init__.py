"""Tests of tasks/serving/: one file per module."""
