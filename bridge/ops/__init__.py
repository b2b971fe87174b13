"""Operations: the HTTP server, the ops API and page, Prometheus metrics, logging."""
