"""A small Flask app: a form POST and a multipart file upload."""

from __future__ import annotations

import hashlib

from flask import Flask, jsonify, request

application = Flask(__name__)


@application.get("/")
def index() -> str:
    return f"flask says hi to {request.args.get('who', 'nobody')}"


@application.post("/form")
def form() -> object:
    return jsonify(name=request.form["name"], tags=request.form.getlist("tag"))


@application.post("/upload")
def upload() -> object:
    stored = request.files["document"]
    data = stored.read()
    return jsonify(
        filename=stored.filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        note=request.form.get("note"),
    )
