"""The review queue: photos worth a person's time go to Label Studio; accepted labels come back as raw photos.

`selection` chooses from a day's prediction log and feedback, `client` talks to Label Studio (official SDK),
`queue` and `labels` are the two steps the Dagster assets run (no Dagster here).
"""
