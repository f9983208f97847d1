"""Tests of tasks/report/: one file per module."""
