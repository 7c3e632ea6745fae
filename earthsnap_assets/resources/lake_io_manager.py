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

    def _path(self, context: dg.OutputContext | dg.InputContext, partition: str = "__all__") -> str:
        return f"{self.prefix}/{'/'.join(context.asset_key.path)}/{partition}.pickle"

    def _key(self, context: dg.OutputContext | dg.InputContext) -> str:
        return self._path(context, context.asset_partition_key if context.has_asset_partitions else "__all__")

    def _op_key(self, output: dg.OutputContext) -> str:
        """Outputs of plain ops (the deploy job) are kept per run and step."""
        return f"{self.prefix}/runs/{output.run_id}/{output.step_key}/{output.name}.pickle"

    def _read(self, key: str) -> object:
        return pickle.loads(self.store.read(self.store.lake_bucket, key))

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        key = self._key(context) if context.has_asset_key else self._op_key(context)
        self.store.write(self.store.lake_bucket, key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        context.add_output_metadata({"value_uri": self.store.uri(self.store.lake_bucket, key)})

    def load_input(self, context: dg.InputContext) -> object:
        """One value, or {partition: value} when an unpartitioned step reads a partitioned asset."""
        if not context.has_asset_key:
            return self._read(self._op_key(context.upstream_output))
        if not context.has_asset_partitions:
            return self._read(self._path(context))
        keys = context.asset_partition_keys
        if context.has_partition_key and len(keys) == 1:
            return self._read(self._path(context, keys[0]))
        return {key: self._read(self._path(context, key)) for key in keys}
