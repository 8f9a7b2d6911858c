"""Optional integrations with packages that are not on metalr's default path."""
