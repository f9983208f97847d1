"""Tests of tasks/steps/: one file per step."""
