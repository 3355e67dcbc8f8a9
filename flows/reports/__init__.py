"""Report rendering (HTML pages from Jinja2 templates, thumbnails, matplotlib plots) and the
dashboard that serves them, outside the bytes layer: storage/ keeps only the writers
(:mod:`storage.reports`)."""
