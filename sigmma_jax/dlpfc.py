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

# The 12 spatialLIBD slices in HEST-1k (MISC12 = 151507 ... MISC1 = 151676) and their donors (3 of
# 4 slices each; HEST's metadata names no patient for them, so `data.sample_groups` carries these).
HEST_IDS = {
    "151507": "MISC12",
    "151508": "MISC11",
    "151509": "MISC10",
    "151510": "MISC9",
    "151669": "MISC8",
    "151670": "MISC7",
    "151671": "MISC6",
    "151672": "MISC5",
    "151673": "MISC4",
    "151674": "MISC3",
    "151675": "MISC2",
    "151676": "MISC1",
}
DONORS = {
    **dict.fromkeys(("151507", "151508", "151509", "151510"), "Br5292"),
    **dict.fromkeys(("151669", "151670", "151671", "151672"), "Br5595"),  # no L1, L2
    **dict.fromkeys(("151673", "151674", "151675", "151676"), "Br8100"),
}
# ST-Align's six held-out slices (§4.3)
PAPER_SLICES = ("151507", "151508", "151509", "151669", "151670", "151673")


def hest_sample_groups(slices=tuple(HEST_IDS)) -> tuple[str, ...]:
    """`data.sample_groups` entries (HEST id = donor) of spatialLIBD `slices`."""
    return tuple(f"{HEST_IDS[s]}={DONORS[s]}" for s in slices)
