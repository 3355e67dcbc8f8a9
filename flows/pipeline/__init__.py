"""The production pipeline: the Prefect flow and its tasks (:mod:`.flow`), the Ray actors that run
the restoring service (:mod:`.actors`), the deployments (:mod:`.deploy`) and the daemons that turn
uploads into runs (:mod:`.watch`, :mod:`.bridge_sqs`, :mod:`.upload_events`).

Kept empty on purpose: importing one module of the room imports nothing else (no Prefect or Ray
for a CLI that only needs the daemons' backoff)."""
