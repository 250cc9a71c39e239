from fastapi import APIRouter

from service.api.routes import events, health, metrics, models, score

api_router = APIRouter()
for r in (score.router, events.router, models.router, health.router, metrics.router):
    api_router.include_router(r)
