"""The rules of the product; no Flask, no HTTP status codes beyond ApiError."""
