"""The config modules: pure plans (``plans``: config + facts -> actions) and the one place that
touches the system (``actions``); k3s's own config and service."""
