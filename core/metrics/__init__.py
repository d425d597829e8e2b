"""Metrics of images: the Inception stack (graph, weights, torch files, features), FID/IS/KID/
sFID/P-R, reference statistics, the oracle of the procedural sets, and memorisation."""
