"""The REST API of the ingestion service (Cexup-shaped JSON envelope, x-api-key auth).

The app keys shared by the route modules and the service are in ingest.api.appkeys.
"""
