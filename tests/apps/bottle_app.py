"""A Bottle app with static and dynamic routes and Bottle's own 404."""

from __future__ import annotations

import bottle

application = bottle.Bottle()


@application.get("/")
def index() -> str:
    return "bottle index"


@application.get("/hello/<name>")
def hello(name: str) -> str:
    return f"Hello, {name}!"


@application.get("/items/<item_id:int>")
def item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "double": item_id * 2, "q": bottle.request.query.get("q")}


@application.post("/echo")
def echo() -> str:
    return "got " + bottle.request.forms.getunicode("text", "")
