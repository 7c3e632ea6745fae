"""`earthsnap review status`: open and finished tasks of every review project (mounted by the main CLI)."""

from __future__ import annotations

import click

from earthsnap_assets.settings import Settings


@click.group(name="review")
def review() -> None:
    """The review queue in Label Studio (EARTHSNAP_REVIEW_URL, EARTHSNAP_REVIEW_TOKEN)."""


@review.command()
def status() -> None:
    """Tasks open and finished per review project; exit 1 when Label Studio cannot be reached."""
    from earthsnap_assets.review.client import ReviewClient, ReviewUnavailable

    settings = Settings.from_env()
    client = ReviewClient(settings.review_url, settings.review_token)
    try:
        client.check()
    except ReviewUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [("PROJECT", "OPEN", "FINISHED", "URL")]
    for group, project_id in sorted(client.review_projects().items()):
        counts = client.counts(project_id)
        rows.append(
            (f"earthsnap-{group}", str(counts["open"]), str(counts["finished"]), client.project_url(project_id))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[3]]))
