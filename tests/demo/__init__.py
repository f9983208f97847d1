"""Tests of tasks/demo/: one file per module."""
