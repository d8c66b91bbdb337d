"""Operations: metrics, logs and readiness, shared by the app, the server and the store."""
