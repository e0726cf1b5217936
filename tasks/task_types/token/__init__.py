"""Token classification (NER): entity spans per text, BIO tags per word; its readers
(CoNLL, Label Studio spans), checks, decoding and metrics."""
