"""The ward dashboard: static single-page app (no CDN), its aggregate read API and live events."""
