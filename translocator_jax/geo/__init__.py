"""Geo: distances, accuracy kernels, S2 partitions and the f* hierarchy."""
from translocator_jax.geo.cells import Partition, build_partition, load_partition_csv, write_partition_csv
from translocator_jax.geo.distance import EARTH_RADIUS_KM, haversine_km
from translocator_jax.geo.hierarchy import Hierarchy, fstar_topk, topk_latlon
from translocator_jax.geo.metrics import THRESHOLDS_KM, accuracy_table, format_table
from translocator_jax.geo.predictions import read_predictions_csv, write_predictions_csv

__all__ = [
    "EARTH_RADIUS_KM", "Hierarchy", "Partition", "THRESHOLDS_KM", "accuracy_table", "build_partition",
    "format_table", "fstar_topk", "haversine_km", "load_partition_csv", "read_predictions_csv",
    "topk_latlon", "write_partition_csv", "write_predictions_csv",
]
