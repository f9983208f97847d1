"""Using a registered model: batch retrieval of a gallery folder (`trafficlip retrieve`), the search
object behind `trafficlip search`, and the HTTP service (`trafficlip serve`).

Imports ``tasks.core``, ``tasks.mlops`` and ``tasks.report``."""
