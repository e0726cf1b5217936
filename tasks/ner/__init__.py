"""Named-entity recognition (token classification): spans, BIO tags and their files."""
