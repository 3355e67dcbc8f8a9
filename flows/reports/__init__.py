"""Report rendering (HTML pages, thumbnails, matplotlib plots) outside the bytes layer: storage/
keeps only the writers (:mod:`storage.reports`)."""
