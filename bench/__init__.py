"""`make bench`: load generators against the service and against the framework's ceiling."""
