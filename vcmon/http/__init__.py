"""The HTTP surface: the server, authentication, the API routes and the metrics exposition."""
