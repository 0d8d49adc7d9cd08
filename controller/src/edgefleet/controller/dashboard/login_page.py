"""The sign-in page: one form that POSTs the API token to ``/login`` (never in the URL)."""

from __future__ import annotations

from edgefleet.controller import __version__
from edgefleet.controller.dashboard.html import e


def render_login(*, message: str | None = None, loopback: bool = False) -> str:
    """The whole page; ``message`` (escaped) says why the last attempt did not sign in."""
    why = f'<p class="why" role="alert">{e(message)}</p>' if message else ""
    hint = (
        "<p class=muted>The API listens on loopback only: the dashboard needs no sign-in "
        'here. <a href="/dashboard">Open the dashboard</a>.</p>'
        if loopback
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Sign in · edgefleet</title>
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
</head>
<body>
<header><a class="brand" href="/dashboard">edgefleet</a></header>
<main><section class="card">
<h2>Sign in to the dashboard</h2>{why}{hint}
<form method="post" action="/login" autocomplete="off">
<p><label for="token">API token</label><br>
<input id="token" name="token" type="password" required maxlength="256" size="48" autofocus></p>
<p><button type="submit">Sign in</button></p>
</form>
<p class="muted">The token is in <code>&lt;data dir&gt;/api-token</code> on the controller
(or its <code>EDGEFLEET_API_TOKEN</code>). The browser keeps a session cookie derived from it,
never the token itself.</p>
</section></main>
<footer>edgefleet controller {e(__version__)}</footer>
</body></html>"""
