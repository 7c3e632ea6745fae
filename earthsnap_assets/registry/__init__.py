"""The MLflow model registry as the platform uses it, without Dagster.

`names` owns the contract (registered model names, version tags, the group -> species artifact); `client`
is the plain MLflow client the serving endpoint, the CLI and the Dagster resource
(`resources/mlflow_registry.py`) all use. Nothing here imports Dagster: the endpoint image does not need
the orchestrator to read the registry.
"""
