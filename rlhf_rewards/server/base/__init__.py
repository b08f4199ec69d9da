"""What the route families share: request/response bases, the served model, request preparation, encodings."""
