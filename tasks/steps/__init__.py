"""The pipeline steps, one module each: validate, prepare, augment, train, evaluate, predict, register,
promote. Each has one plain ``run(params, paths...)`` function that the CLI calls.

A step imports ``tasks.core``, ``tasks.report`` and ``tasks.mlops``, never another step."""
