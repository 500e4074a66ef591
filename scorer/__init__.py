"""The central scorer at headquarters: ingest of dock events, acknowledgements, scorecards."""
