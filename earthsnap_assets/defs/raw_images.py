"""Raw data as users and the app store it: images under the raw prefix and taxonomy.csv."""

from collections import Counter

import dagster as dg

from earthsnap_assets.defs.partitions import add_new_groups
from earthsnap_assets.ml.manifest import species_of
from earthsnap_assets.ml.taxonomy import Taxonomy, TaxonomyError, parse_taxonomy
from earthsnap_assets.refs import RawListing
from earthsnap_assets.reports import markdown_table
from earthsnap_assets.resources.object_store import ObjectStore

IMAGES_PREFIX = "images/"
TAXONOMY_KEY = "taxonomy.csv"


@dg.asset(group_name="data", kinds={"s3"})
def raw_images(context: dg.AssetExecutionContext, store: ObjectStore) -> dg.Output[RawListing]:
    """Every object under `s3://<raw-bucket>/images/` (key, ETag, size): the input of data QA."""
    objects = tuple(store.list_objects(store.raw_bucket, IMAGES_PREFIX))
    taxonomy_etag = next((o.etag for o in store.list_objects(store.raw_bucket, TAXONOMY_KEY)), None)
    listing = RawListing(store.raw_bucket, IMAGES_PREFIX, objects, TAXONOMY_KEY, taxonomy_etag)
    folders = Counter(species_of(o.key, IMAGES_PREFIX) or "(outside layout)" for o in objects)
    context.log.info(f"{len(objects)} objects, {listing.total_bytes} bytes under {store.raw_bucket}/{IMAGES_PREFIX}")
    return dg.Output(
        listing,
        data_version=dg.DataVersion(listing.listing_hash),
        metadata={
            "objects": len(objects),
            "bytes": listing.total_bytes,
            "listing_hash": listing.listing_hash,
            "species_folders": len(folders),
            "uri": f"s3://{store.raw_bucket}/{IMAGES_PREFIX}",
            "objects_per_folder": dg.MetadataValue.md(markdown_table(["folder", "objects"], sorted(folders.items()))),
        },
    )


@dg.asset(group_name="data", kinds={"s3"})
def taxonomy(context: dg.AssetExecutionContext, store: ObjectStore, raw_images: RawListing) -> dg.Output[Taxonomy]:
    """`taxonomy.csv` parsed and validated: species -> group; errors name the offending line."""
    if raw_images.taxonomy_etag is None:
        raise dg.Failure(f"s3://{raw_images.bucket}/{TAXONOMY_KEY} is missing: upload a 'species,group' CSV")
    try:
        parsed = parse_taxonomy(store.read(raw_images.bucket, TAXONOMY_KEY).decode("utf-8"))
    except (TaxonomyError, UnicodeDecodeError) as exc:
        raise dg.Failure(f"s3://{raw_images.bucket}/{TAXONOMY_KEY}: {exc}") from exc
    folders = {species_of(o.key, raw_images.prefix) for o in raw_images.objects} - {None}
    unknown = sorted(folders - set(parsed.species_to_group))
    without_images = sorted(set(parsed.species_to_group) - folders)
    new_groups = add_new_groups(context.instance, parsed.groups)
    if new_groups:
        context.log.info(f"new species groups become partitions of species_group: {new_groups}")
    if unknown:
        context.log.warning(f"image folders not in taxonomy.csv (their images will be rejected): {unknown}")
    rows = [(g, len(parsed.species_in(g)), ", ".join(parsed.species_in(g))) for g in parsed.groups]
    return dg.Output(
        parsed,
        data_version=dg.DataVersion(parsed.fingerprint()),
        metadata={
            "species": len(parsed.species_to_group),
            "groups": len(parsed.groups),
            "fingerprint": parsed.fingerprint(),
            "new_group_partitions": dg.MetadataValue.json(new_groups),
            "unknown_species_folders": dg.MetadataValue.json(unknown),
            "species_without_images": dg.MetadataValue.json(without_images),
            "groups_table": dg.MetadataValue.md(markdown_table(["group", "species", "members"], rows)),
        },
    )
