"""A chat room in a Flask app: the page at /, its WebSocket at /ws, on one port.

    python examples/flask_chat.py [PORT]      (default 5000; 0 picks a free port)
    gunicorn -k gthread --threads 50 --chdir examples flask_chat:app

Open the page in two browser tabs and chat. The WebSocket runs in the
thread the web server gave the request (Werkzeug's threaded server, or one
of gunicorn's --threads), for as long as the tab stays open.
"""

from __future__ import annotations

import sys
import threading

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import blockws

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>blockws chat</title>
<ul id="messages"></ul>
<form id="form"><input id="text" autocomplete="off" autofocus> <button>Send</button></form>
<script>
  // ws:// for a page served over http://, wss:// over https://
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws");
  const show = (text) => {
    const li = document.createElement("li");
    li.textContent = text;
    document.getElementById("messages").append(li);
  };
  ws.onopen = () => show("(connected)");
  ws.onmessage = (event) => show(event.data);
  ws.onclose = () => show("(disconnected)");
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();  // stay on the page
    const input = document.getElementById("text");
    if (input.value) ws.send(input.value);
    input.value = "";
  };
</script>
"""

app = Flask(__name__)


@app.route("/")
def index() -> str:
    return PAGE


# Everyone connected, shared by the connections' threads: guarded by a lock.
clients: set[blockws.WebSocket] = set()
lock = threading.Lock()


def chat(ws: blockws.WebSocket) -> None:
    with lock:
        clients.add(ws)
    try:
        for message in ws:  # until this client leaves
            with lock:
                everyone = list(clients)  # a copy: don't send while holding the lock
            # To the sender too: its page shows what it said. broadcast() never
            # waits on a slow tab: one that can't take the message now misses it.
            blockws.broadcast(everyone, message)
    finally:
        with lock:
            clients.discard(ws)


# /ws goes to blockws, every other path to Flask. A plain GET of /ws gets
# "426 Upgrade Required".
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/ws": blockws.wsgi_app(chat)})


def main() -> None:
    from werkzeug.serving import make_server

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    # threaded: a thread per request, so an open WebSocket blocks no one else
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"flask chat on http://127.0.0.1:{server.server_port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
