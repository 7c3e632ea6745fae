"""Asset values (small references: URIs, versions, counts) pickled into the lake bucket.

Values live in the object store rather than on a local disk so that steps running in separate pods
(k8s_job_executor) hand them to each other exactly as they do on a laptop.
"""

from __future__ import annotations

import pickle

import dagster as dg

from earthsnap_assets.resources.object_store import ObjectStore


class LakeIOManager(dg.ConfigurableIOManager):
    store: ObjectStore
    prefix: str = "dagster/io"

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        parts = "/".join(context.asset_key.path)
        partition = context.asset_partition_key if context.has_asset_partitions else "__all__"
        return f"{self.prefix}/{parts}/{partition}.pickle"

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        key = self._key(context)
        self.store.write(self.store.lake_bucket, key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        context.add_output_metadata({"value_uri": self.store.uri(self.store.lake_bucket, key)})

    def load_input(self, context: dg.InputContext) -> object:
        key = self._key(context)
        return pickle.loads(self.store.read(self.store.lake_bucket, key))
