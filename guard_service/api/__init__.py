"""HTTP layer: FastAPI app, routers, schemas and error bodies."""
