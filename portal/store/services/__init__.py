"""Operations shared by the UI, the REST API and the workers; each one is a single transaction."""
