"""The science: each stage's data handling and models. Nothing here knows about click or the cache layout."""
