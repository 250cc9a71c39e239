"""HTTP layer: pydantic schemas, dependencies and one router per resource."""
