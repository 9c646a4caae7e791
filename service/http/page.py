"""The page at /: Swagger UI over /docs.json, loading nothing from outside the server.

The page is the service's own; Swagger UI's scripts and styles are the copies BentoML serves with every service
at /static_content/ (its own page at / loads them too, and Google Tag Manager, and has Swagger UI send the
document's URL to validator.swagger.io on any host but localhost). Here the validator is off and the page names
no other host: in a cluster the server may not reach the internet at all. tests/test_app.py checks that the page
names nothing outside, and the server tests that each file it loads answers 200.
"""

from __future__ import annotations

import html

ASSETS = ("swagger-ui.css", "index.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")


def page(title: str) -> str:
    styles = "\n    ".join(f'<link rel="stylesheet" type="text/css" href="./static_content/{name}" />'
                            for name in ASSETS if name.endswith(".css"))  # fmt: skip
    scripts = "\n    ".join(f'<script src="./static_content/{name}" charset="UTF-8"></script>'
                             for name in ASSETS if name.endswith(".js"))  # fmt: skip
    return f"""<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>{html.escape(title)}</title>
    {styles}
  </head>
  <body>
    <div id="swagger-ui"></div>
    {scripts}
    <script>
      window.onload = function () {{
        window.ui = SwaggerUIBundle({{
          url: "./docs.json",
          validatorUrl: null,
          dom_id: "#swagger-ui",
          deepLinking: true,
          presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
          layout: "StandaloneLayout",
        }});
      }};
    </script>
  </body>
</html>
"""
