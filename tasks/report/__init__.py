"""Pictures and pages of an evaluation: plots, retrieval galleries, the offline HTML report.

Imports ``tasks.core`` and ``tasks.mlops`` (to rebuild a report from a tracked run)."""
