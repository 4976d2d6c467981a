"""Building the metadata entry list (WordNet, Wikipedia unigrams/bigrams/titles), merge and lint."""
