"""DLPFC, ST-Align's evaluation tissue: its layers and the paper's nine genes. One definition for
the demo's slices, the config and the evaluation (as `scales` is for SIGMMA's three scales).

The six held-out DLPFC slices (Maynard et al. 2021, spatialLIBD) are annotated with cortical layers
L1–L6 and white matter; slices of the donor of 151669–151672 lack L1 and L2 (5 domains, the others
7). ST-Align's Table 3 predicts nine genes from the image, in three groups.
"""

LAYERS = ("L1", "L2", "L3", "L4", "L5", "L6", "WM")
NINE_GENES = {
    "layer markers": ("FABP7", "CCK", "PVALB"),
    "laminar": ("PCP4", "MOBP", "SNAP25"),
    "non-laminar": ("IGKC", "HBB", "NPY"),
}
NINE = tuple(g for group in NINE_GENES.values() for g in group)
