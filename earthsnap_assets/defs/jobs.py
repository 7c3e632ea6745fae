"""Jobs users launch from the UI, the CLI or the GraphQL API."""

import dagster as dg

data_job = dg.define_asset_job(
    "data_pipeline",
    selection=dg.AssetSelection.groups("data"),
    description="List raw images, validate them into a versioned manifest, build shards and splits.",
)
