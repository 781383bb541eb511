"""Using a trained run: embed slides and predict expression (embed), find microenvironments in the
cell embeddings (clusters), draw the paper's figures (figures). After evaluation in the data flow."""
