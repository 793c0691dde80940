"""Everything between an HDF5 file and a batch: sessions, catalog, splits, windows,
normalization, datasets and the converter."""
