"""A Flask app for pythrust's feature tests: X-Sendfile by Flask's own send_file, cacheable and
compressible responses, an event stream it sends one event at a time, and a count of what it served.

GET /file?path=P&type=T       send_file(P) with USE_X_SENDFILE (Flask adds ETag, Last-Modified, length)
GET /download?path=P&name=N   send_file(P) as an attachment named N (adds Content-Disposition)
GET /sendfile?path=P          X-Sendfile as Rails sends it: Content-Length 0 (&encoding=E: Content-Encoding E)
GET /cached?max_age=N&pad=K   "Cache-Control: public, max-age=N", ETag, Set-Cookie, a body saying how often
                              it was made (then K bytes of padding); with &vary=H adds Vary: H
GET /text?size=N              N bytes of HTML; with &private=1 Cache-Control private
GET /stream                   text/event-stream: event 1, then event 2 once /release is called
GET /release                  lets /stream send its second event
GET /accel?uri=U              an empty 200 with X-Accel-Redirect: U (as Rack::Sendfile sends it)
GET /statement?dir=D          X-Sendfile of D/<cookie "user">.txt, public, Vary: Cookie (per-user files)
GET /forwarded                echoes X-Forwarded-Host; public, Vary: X-Forwarded-Host
GET /nothing                  204, public
GET /headers                  the request headers the app got, as JSON
GET /hits?path=P              how many requests for P the app has seen
"""

import collections
import os
import threading

from flask import Flask, Response, request, send_file
from werkzeug.serving import WSGIRequestHandler, make_server

app = Flask(__name__)
app.config["USE_X_SENDFILE"] = True
seen: collections.Counter[str] = collections.Counter()
released = threading.Event()


@app.before_request
def count() -> None:
    seen[request.path] += 1


@app.get("/file")
def file() -> Response:
    return send_file(request.args["path"], mimetype=request.args.get("type"))


@app.get("/download")
def download() -> Response:
    return send_file(request.args["path"], as_attachment=True, download_name=request.args["name"])


@app.get("/sendfile")
def raw_sendfile() -> Response:
    # As Rails serves a precompressed asset: Content-Length 0, the encoding of the file named.
    response = Response(b"", mimetype="text/plain")
    # The path's UTF-8 bytes, as Rails sends them (a WSGI header is latin-1 text).
    response.headers["X-Sendfile"] = request.args["path"].encode().decode("latin-1")
    if "encoding" in request.args:
        response.headers["Content-Encoding"] = request.args["encoding"]
    return response


@app.get("/accel")
def accel() -> Response:
    response = Response(b"", mimetype="text/plain")
    response.headers["X-Accel-Redirect"] = request.args["uri"]
    return response


@app.get("/cached")
def cached() -> Response:
    body = f"made {seen['/cached']} times; " + "x" * int(request.args.get("pad", "0"))
    response = Response(body, mimetype="text/plain")
    response.add_etag()
    response.headers["Cache-Control"] = f"public, max-age={request.args.get('max_age', '60')}"
    response.set_cookie("session", "secret")
    if "vary" in request.args:
        response.headers["Vary"] = request.args["vary"]
    return response


@app.get("/text")
def text() -> Response:
    body = ("<p>" + "hello pythrust " * 100_000)[: int(request.args.get("size", "5000"))]
    response = Response(body, mimetype="text/html")
    if request.args.get("private"):
        response.headers["Cache-Control"] = "private"
    return response


@app.get("/stream")
def stream() -> Response:
    def events():
        yield "data: one\n\n"
        released.wait(30)
        released.clear()
        yield "data: two\n\n"

    return Response(events(), mimetype="text/event-stream")


@app.get("/release")
def release() -> str:
    released.set()
    return "released"


@app.get("/statement")
def statement() -> Response:
    response = Response(b"", mimetype="text/plain")
    response.headers["X-Sendfile"] = os.path.join(request.args["dir"], request.cookies["user"] + ".txt")
    response.headers["Cache-Control"] = "public, max-age=600"
    response.headers["Vary"] = "Cookie"
    return response


@app.get("/forwarded")
def forwarded() -> Response:
    response = Response(request.headers.get("X-Forwarded-Host", ""), mimetype="text/plain")
    response.headers["Cache-Control"] = "public, max-age=600"
    response.headers["Vary"] = "X-Forwarded-Host"
    return response


@app.get("/nothing")
def nothing() -> Response:
    response = Response(status=204)
    response.headers["Cache-Control"] = "public, max-age=600"
    return response


@app.get("/headers")
def headers() -> dict[str, str]:
    return dict(request.headers)


@app.get("/hits")
def hits() -> str:
    return str(seen[request.args["path"]])


if __name__ == "__main__":
    WSGIRequestHandler.protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as production servers
    server = make_server("127.0.0.1", int(os.environ["PORT"]), app, threaded=True)
    print(f"app listening on {os.environ['PORT']}", flush=True)
    server.serve_forever()
