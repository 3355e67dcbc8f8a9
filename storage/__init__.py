"""Object storage layer: stores (local folder, S3), keys, frame codecs, sidecars, ledger, report
writers. No torch model code lives here.

Import from the submodules (entry point: :func:`storage.stores.open_store`); this package
re-exports nothing, so ``import storage.keys`` stays cheap (no boto3, pandas or Pillow import).
"""
