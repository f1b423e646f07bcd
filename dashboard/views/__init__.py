"""The dashboard's views: thin functions that read widgets, call queries and figure builders, draw."""
