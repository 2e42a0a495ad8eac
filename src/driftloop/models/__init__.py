"""Model families behind one interface (TF-IDF, the transformer family, the ensemble), their evaluation
and the model selection by cross-validation."""
