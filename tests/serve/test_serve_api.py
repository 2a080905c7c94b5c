"""The REST API in-process (the real app under Starlette's TestClient, lifespan included):
answers, formats, limits, bad input, auth, metrics, the page and the docs."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from visionsmith.serve import ServeOptions, create_app, load_backend

PREDICT = "/v1/models/digits:predict"


@pytest.fixture(scope="module")
def client(digits_run):
    # PyTorch: these answers are compared with `visionsmith predict` on the checkpoint (test_serve_backend
    # covers the default, ONNX Runtime)
    app = create_app([load_backend(str(digits_run), backend="pytorch")],
                     ServeOptions(max_upload_bytes=200_000, max_pixels=1_000_000, max_images=4))
    with TestClient(app) as c:
        yield c


def _post_file(client, data: bytes, name="x.png", ctype="image/png", **kw):
    return client.post(PREDICT, files={"file": (name, data, ctype)}, **kw)


def test_predict_matches_visionsmith_predict(client, digits_run, digit_pngs, tmp_path):
    """The server answers what `visionsmith predict` answers for the same file."""
    import visionsmith
    files = []
    for i, data in enumerate(digit_pngs[:4]):
        (tmp_path / f"{i}.png").write_bytes(data)
        files.append(tmp_path / f"{i}.png")
    want = visionsmith.predict(digits_run, files, topk=3).predictions
    for f, w in zip(files, want):
        r = _post_file(client, f.read_bytes(), f.name, params={"topk": 3})
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["model"] == "digits" and got["latency_ms"] > 0
        (pred,) = got["predictions"]
        assert pred["filename"] == f.name
        assert [t["class"] for t in pred["topk"]] == [c for c, _ in w.topk]
        np.testing.assert_allclose([t["prob"] for t in pred["topk"]], [q for _, q in w.topk], atol=1e-5)


def test_three_ways_to_send_and_many_images(client, digit_pngs):
    a, b = digit_pngs[0], digit_pngs[1]
    multi = client.post(PREDICT, files=[("file", ("a.png", a, "image/png")), ("file", ("b.png", b, "image/png"))],
                        data={"topk": "2"})
    js = client.post(PREDICT, json={"images": [base64.b64encode(a).decode(),
                                               "data:image/png;base64," + base64.b64encode(b).decode()], "topk": 2})
    raw = client.post(PREDICT, content=a, headers={"Content-Type": "image/png"}, params={"topk": 2})
    for r in (multi, js, raw):
        assert r.status_code == 200, r.text
    pm, pj = multi.json()["predictions"], js.json()["predictions"]
    assert [p["filename"] for p in pm] == ["a.png", "b.png"]
    assert len(pm) == len(pj) == 2 and all(len(p["topk"]) == 2 for p in pm + pj)
    assert [p["topk"] for p in pm] == [p["topk"] for p in pj]  # same images, same answers, in order
    assert raw.json()["predictions"][0]["topk"] == pm[0]["topk"]


def test_topk_is_capped_and_probabilities_sum_to_one(client, digit_pngs):
    r = _post_file(client, digit_pngs[0], params={"topk": 50})
    topk = r.json()["predictions"][0]["topk"]
    assert len(topk) == 10  # 10 classes
    assert abs(sum(t["prob"] for t in topk) - 1) < 1e-4
    assert [t["prob"] for t in topk] == sorted((t["prob"] for t in topk), reverse=True)


@pytest.mark.parametrize("topk", [2.9, True, "2.9", -3, 0, [3]])
def test_a_topk_that_is_not_a_positive_integer_is_a_400(client, digit_pngs, topk):
    r = client.post(PREDICT, json={"image": base64.b64encode(digit_pngs[0]).decode(), "topk": topk})
    assert r.status_code == 400 and "topk must be an integer >= 1" in r.text


def test_a_huge_bad_value_is_not_echoed_back(client, digit_pngs):
    r = client.post(PREDICT, files={"file": ("x.png", digit_pngs[0], "image/png")}, data={"topk": "x" * 150_000})
    assert r.status_code == 400 and "topk must be an integer >= 1" in r.text and len(r.content) < 500


def test_get_on_predict_is_405(client):
    name = client.get("/v1/models").json()["models"][0]["name"]
    r = client.get(f"/v1/models/{name}:predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_json_nested_too_deep_is_a_400_not_a_500(client):
    r = client.post(PREDICT, content=b"[" * 90_000 + b"]" * 90_000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.text


def test_photo_like_inputs_are_converted(client):
    """RGB, RGBA, palette, 16-bit and JPEG uploads to a grayscale model all work."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    variants = {}
    for mode in ("RGB", "RGBA", "P", "I;16", "L"):
        im = Image.fromarray(rgb).convert(mode if mode != "I;16" else "L")
        if mode == "I;16":
            im = Image.fromarray((np.asarray(im).astype(np.uint16) * 257))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        variants[mode] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    variants["jpeg"] = buf.getvalue()
    buf = io.BytesIO()  # large enough to be decoded in the thread pool, not on the event loop
    Image.fromarray(rng.integers(0, 255, (600, 500, 3), dtype=np.uint8)).save(buf, format="JPEG")
    variants["photo"] = buf.getvalue()
    for mode, data in variants.items():
        r = _post_file(client, data, f"{mode}.png")
        assert r.status_code == 200, (mode, r.text)


def test_models_health_and_unknown_model(client):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["digits"]
    m = models[0]
    assert m["kind"] == "pytorch" and m["task"] == "classification" and len(m["classes"]) == 10
    assert (m["image_size"], m["in_chans"], m["grayscale"]) == (16, 1, True)
    assert client.get("/v1/models/digits").json()["name"] == "digits"
    assert client.get("/healthz").json() == {"status": "ok", "models": ["digits"]}
    r = client.post("/v1/models/nope:predict", content=b"x")
    assert r.status_code == 404 and "known models: digits" in r.json()["detail"] and r.json()["models"] == ["digits"]
    assert client.get("/v1/models/nope").status_code == 404


@pytest.mark.parametrize("case, status, words", [
    ("empty body", 400, "empty request body"),
    ("zero-byte file", 400, "zero-byte"),
    ("text file", 415, "not an image"),
    ("truncated png", 400, "truncated"),
    ("unsupported type", 415, "unsupported Content-Type"),
    ("bad base64", 400, "not valid base64"),
    ("bad json", 400, "not valid JSON"),
    ("json without image", 400, '"image"'),
    ("bad topk", 400, "topk must be an integer"),
    ("zero topk", 400, "topk must be an integer"),
    ("too many pixels", 413, "1000000"),
    ("upload too big", 413, "limit of 0.1907 MB (200000 bytes)"),
    ("upload too big, no length", 413, "over the limit"),
    ("too many images", 413, "the limit is 4"),
    ("too many files", 413, "the limit is 4"),
    ("multipart without boundary", 400, "without a boundary"),
    ("broken multipart", 400, "malformed multipart"),
])
def test_bad_input_is_a_4xx_that_says_why(client, digit_pngs, make_png, case, status, words):
    good = digit_pngs[0]
    big_png = make_png(np.zeros((1100, 1000), np.uint8))  # 1.1 M pixels > max_pixels, a few KB of file
    send = {
        "empty body": lambda: client.post(PREDICT, content=b"", headers={"Content-Type": "image/png"}),
        "zero-byte file": lambda: _post_file(client, b""),
        "text file": lambda: _post_file(client, b"hello, not an image", "notes.txt", "text/plain"),
        "truncated png": lambda: _post_file(client, make_png(np.full((64, 64), 7, np.uint8))[:-30]),
        "unsupported type": lambda: client.post(PREDICT, content=b"abc", headers={"Content-Type": "text/plain"}),
        "bad base64": lambda: client.post(PREDICT, json={"image": "***not base64***"}),
        "bad json": lambda: client.post(PREDICT, content=b"{oops", headers={"Content-Type": "application/json"}),
        "json without image": lambda: client.post(PREDICT, json={"picture": "x"}),
        "bad topk": lambda: _post_file(client, good, params={"topk": "three"}),
        "zero topk": lambda: _post_file(client, good, params={"topk": 0}),
        "too many pixels": lambda: _post_file(client, big_png),
        "upload too big": lambda: _post_file(client, b"\0" * 300_000),
        "upload too big, no length": lambda: client.post(PREDICT, content=iter([b"\0" * 150_000] * 2),
                                                         headers={"Content-Type": "image/png"}),
        "too many images": lambda: client.post(PREDICT, json={"images": [base64.b64encode(good).decode()] * 5}),
        "too many files": lambda: client.post(PREDICT, files=[("file", (f"{i}.png", good, "image/png"))
                                                              for i in range(5)]),
        "multipart without boundary": lambda: client.post(PREDICT, content=b"--x\r\n",
                                                          headers={"Content-Type": "multipart/form-data"}),
        "broken multipart": lambda: client.post(PREDICT, content=b"garbage without any boundary line",
                                                headers={"Content-Type": "multipart/form-data; boundary=xyz"}),
    }[case]
    r = send()
    assert r.status_code == status, r.text
    assert words in r.json()["detail"], r.json()


def test_one_bad_image_names_itself(client, digit_pngs):
    r = client.post(PREDICT, files=[("file", ("good.png", digit_pngs[0], "image/png")),
                                    ("file", ("bad.png", b"GIF89a broken", "image/gif"))])
    assert r.status_code in (400, 415)
    assert r.json()["errors"] == [{"index": 1, "filename": "bad.png", "reason": r.json()["errors"][0]["reason"]}]
    assert "bad.png" in r.json()["detail"] and "good.png" not in r.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(client):
    """A PNG that claims 20000 x 20000 pixels is answered from its header (413), never decoded."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")  # ~50 KB of zeros that decode to 400 M pixels
    assert len(buf.getvalue()) < 200_000
    r = _post_file(client, buf.getvalue(), "bomb.png")
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]
    assert "--max-pixels" in r.json()["detail"]


def test_metrics_count_requests_latency_and_batches(client, digit_pngs):
    _post_file(client, digit_pngs[0])
    client.post(PREDICT, content=b"")
    r = client.get("/metrics")
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text format
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
    text = r.text
    assert 'visionsmith_requests_total{handler="/v1/models/{name}:predict",method="POST",status="200"}' in text
    assert re.search(r'visionsmith_requests_total\{handler="/v1/models/\{name\}:predict",method="POST",status="400"\} '
                     r'[1-9]', text)
    assert 'visionsmith_request_latency_seconds_bucket{handler="/v1/models/{name}:predict",le="0.1"}' in text
    assert re.search(r'visionsmith_batch_size_count\{model="digits"\} [1-9]', text)
    assert re.search(r'visionsmith_images_total\{model="digits"\} [1-9]', text)
    # A random URL is counted under one label, never under its own path.
    client.get("/no/such/page/123")
    assert "/no/such/page" not in client.get("/metrics").text


def test_page_and_docs_need_no_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/", "/static/app.js", "/static/style.css"):
        body = client.get(path).text
        assert client.get(path).status_code == 200
        # Nothing is fetched from another host (links to local paths only).
        assert not re.search(r"(src|href)=\"(https?:)?//", body) and "import(" not in body and "cdn" not in body.lower()
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and not re.search(r"https?://[^\"']*swagger", docs)
    for asset in re.findall(r"(?:src|href)=['\"](/[^'\"]+\.(?:js|css))", docs):
        assert client.get(asset).status_code == 200, asset
    schema = client.get("/openapi.json").json()
    assert "/v1/models/{name}:predict" in schema["paths"]


def test_openapi_documents_the_upload_formats(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/models/{name}:predict"]["post"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(op["requestBody"]["content"])
    assert {"400", "401", "404", "413", "415"} <= set(op["responses"])


# -- auth ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def token_client(digits_run):
    with TestClient(create_app([load_backend(str(digits_run))], ServeOptions(token="s3cret-token"))) as c:
        yield c


def test_token_is_required_on_api_and_metrics_but_not_health(token_client, digit_pngs):
    c = token_client
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                    {"Authorization": "Basic s3cret-token"}):
        r = c.post(PREDICT, files={"file": ("x.png", digit_pngs[0], "image/png")}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        assert "Authorization: Bearer" in r.json()["detail"]
        assert c.get("/v1/models", headers=headers).status_code == 401
        assert c.get("/metrics", headers=headers).status_code == 401
    # 401 comes before anything else: an unknown model does not leak as 404 to a stranger.
    assert c.post("/v1/models/nope:predict", content=b"x").status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    assert c.post(PREDICT, files={"file": ("x.png", digit_pngs[0], "image/png")}, headers=ok).status_code == 200
    assert c.get("/v1/models", headers=ok).status_code == 200 and c.get("/metrics", headers=ok).status_code == 200
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_loopback_only_refuses_other_host_names(digits_run, digit_pngs):
    """Without a token the server answers only requests addressed to localhost (DNS rebinding)."""
    app = create_app([load_backend(str(digits_run))], ServeOptions(loopback_only=True))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
        r = c.post(PREDICT, content=digit_pngs[0], headers={"Host": "evil.example:8000", "Content-Type": "image/png"})
        assert r.status_code == 421 and "localhost" in r.json()["detail"]
