"""The HTTP service and its self-check."""

import importlib
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING

from dateutil import parser as dateparser
from dateutil.relativedelta import relativedelta

from . import config

if TYPE_CHECKING:
    from http.server import BaseServer

try:
    import ujson as fastjson  # optional: not curated, json is the fallback
except ImportError:
    fastjson = json

PLUGINS = os.environ.get("PYHELLO_PLUGINS", "").split(",")


def load_plugins():
    # Which plugins exist is decided at run time: not statically checkable.
    return [importlib.import_module(name) for name in PLUGINS if name]


def greeting():
    cfg = config.load()
    started = dateparser.isoparse(str(cfg["started"]).replace(" ", "T"))
    later = started + relativedelta(months=+1)
    return f"{cfg['greeting']} (config since {started.date()}, review {later.date()})"


def self_check():
    importlib.import_module("yaml")
    cfg = config.load()
    if config.loader_name() != "CSafeLoader":
        print("self-check failed: libyaml's C loader is not available", flush=True)
        return 1
    if cfg.get("greeting") != "hello":
        print("self-check failed: configuration", flush=True)
        return 1
    print(f"self-check ok: {greeting()} {fastjson.dumps({'loader': config.loader_name()})}")
    return 0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = (greeting() + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(addr):
    host, _, port = addr.rpartition(":")
    server: "BaseServer" = HTTPServer((host or "0.0.0.0", int(port)), Handler)
    server.serve_forever()
    return 0
