"""aepipe flows: Prefect orchestration, MLflow tracking and the CLI over aecore."""
