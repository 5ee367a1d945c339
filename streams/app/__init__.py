"""The Faust application around the pure core: agents, account feed, alert publishing, metrics."""
