"""Production monitoring: the prediction log's schema, drift and quality statistics (no Dagster)."""
