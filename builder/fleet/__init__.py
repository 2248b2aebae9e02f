"""After the build: stamping a built artifact with a site's or a fleet's configs (``stamp``),
rendering a fleet's per-device configs (``render``), writing a card or disk (``flash``)."""
