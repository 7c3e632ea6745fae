"""The prediction log and feedback tables: one schema each, shared by the endpoint that writes them and the
monitoring and review assets that read them (paths in `lake/paths.py`).

Both are append-only Parquet batches under a day prefix (UTC), so a day's monitoring reads that day's
rows (dN), never the whole history. One row per answered request; a request id joins feedback to it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

LEVELS = ("species", "group")  # `group`: the child was unsure (or not deployed) and the answer backed off
VERDICTS = ("confirmed", "corrected")  # what an app user said about an answer
# Who sent a request: the app's users, or the platform's own stage tests (golden photos at every deploy).
# Monitoring and the review queue look at app traffic only; the header is how a caller says which it is.
TRAFFIC = ("app", "stage-test")
TRAFFIC_HEADER = "x-earthsnap-traffic"

TOP_K_ENTRY = pa.struct([("species", pa.string()), ("group", pa.string()), ("probability", pa.float64())])

PREDICTION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),  # uuid4 hex, returned to the caller as `request_id`
        ("ts", pa.timestamp("us", tz="UTC")),  # when the answer was sent
        ("env", pa.string()),  # staging | production
        ("replica", pa.string()),  # which endpoint process answered (host-pid)
        ("model_versions", pa.map_(pa.string(), pa.string())),  # registered name -> version that computed it
        ("dataset_version", pa.string()),  # the deployed parent's dataset version (the drift reference)
        ("level", pa.string()),  # one of LEVELS
        ("species", pa.string()),  # the answer; null when it backed off to the group
        ("group", pa.string()),  # the answer's group
        ("probability", pa.float64()),  # the answer's probability (joint for species, P(group) for a back-off)
        ("top_k", pa.list_(TOP_K_ENTRY)),  # as answered
        ("routed_groups", pa.list_(pa.string())),  # groups whose child ran
        ("unexpanded_mass", pa.float64()),
        ("latency_ms", pa.float64()),  # request received -> answer ready
        ("image_sha256", pa.string()),  # of the photo's bytes as uploaded
        ("image_bytes", pa.int64()),
        ("width", pa.int32()),  # of the photo as uploaded
        ("height", pa.int32()),
        ("brightness", pa.float32()),  # mean of the model input's pixels in [0, 1] (input drift)
        ("photo_key", pa.string()),  # lake key of the kept photo (`paths.request_photo`); null unless kept
        ("traffic", pa.string()),  # one of TRAFFIC (null in batches written before the column: app)
    ]
)


def app_traffic(table: pa.Table) -> pa.Table:
    """The rows the app's users caused: what monitoring measures and reviewers see (stage tests left out)."""
    if "traffic" not in table.column_names:
        return table
    column = table["traffic"]
    return table.filter(pc.or_kleene(pc.is_null(column), pc.equal(column, "app")))


FEEDBACK_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),  # the prediction this is about
        ("ts", pa.timestamp("us", tz="UTC")),
        ("env", pa.string()),
        ("replica", pa.string()),
        ("verdict", pa.string()),  # one of VERDICTS
        ("species", pa.string()),  # the species the user confirms (the answer) or gives instead (a correction)
        ("group", pa.string()),  # that species' group in the taxonomy
    ]
)
