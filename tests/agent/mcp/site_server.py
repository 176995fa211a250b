"""A site's own expert served over MCP with FastMCP: what a hospital writes without medloop.

Run by the tests as ``python site_server.py [stdio|http PORT]``. ``mean_intensity`` takes the
image as the convention says (``image: {base64, filename}``, a PNG) and answers with structured
content shaped like medloop's evidence; ``site_protocol`` is plain text; ``always_fails``
reports an error result; ``crash`` ends the server mid-call.
"""

from __future__ import annotations

import base64
import io
import os
import sys

import numpy as np
from mcp.server.fastmcp import FastMCP
from PIL import Image
from pydantic import BaseModel, Field

mcp = FastMCP("site-experts")


class ImagePayload(BaseModel):
    base64: str = Field(description="the image, PNG, base64")
    filename: str | None = None


class Intensity(BaseModel):
    summary: str
    score: float
    mean: float
    width: int
    height: int


@mcp.tool()
def mean_intensity(image: ImagePayload, threshold: int = 128) -> Intensity:
    """Mean grey level of the image (0-255) and the share of pixels above a threshold."""
    px = np.asarray(Image.open(io.BytesIO(base64.b64decode(image.base64))).convert("L"),
                    dtype=np.float64)
    above = float((px > threshold).mean())
    return Intensity(summary=f"mean grey level {px.mean():.2f}; {above:.1%} of pixels above "
                             f"{threshold}", score=0.9, mean=float(px.mean()),
                     width=px.shape[1], height=px.shape[0])


@mcp.tool()
def site_protocol(topic: str) -> str:
    """The site's reporting protocol for a topic, e.g. 'chest radiograph'."""
    return f"Site protocol for {topic}: report heart size and both costophrenic angles."


@mcp.tool()
def always_fails(reason: str) -> str:
    """A tool whose backend is down."""
    raise RuntimeError(f"backend down: {reason}")


@mcp.tool()
def crash() -> str:
    """Ends the server process mid-call, as a crashing backend does."""
    os._exit(3)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        mcp.settings.port = int(sys.argv[2])
        mcp.run(transport="streamable-http")
    else:
        mcp.run()
