"""The hospital-side ingestion service: MQTT to registry, time series and EWS delivery."""
