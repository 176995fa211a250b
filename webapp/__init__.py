"""medloop's Gradio web app: chat about medical images, see the evidence and the tool trace.

Research software, not a medical device. The app renders what the agent graph streams and owns
no reasoning of its own. One concern per module:

* ``render``: the evidence overlay, the similar-cases gallery, the trace, the answer;
* ``uploads``: browser files into the store through ``tools.ingest.ingest_path`` (the graph's
  own ingest, so a volume arrives with its axial, coronal and sagittal planes);
* ``sessions``: one checkpointed thread per browser, its secret, and the graphs (``Runner``);
* ``handlers``: ask, upload, speak, reload and start over;
* ``speech``: offline Whisper transcription of a spoken question;
* ``layout``: the page (``make_app``); ``launch``: the command line and secure launch.

``app.py`` at the repository root is the entry point (``python app.py`` or ``medloop app``).
"""

__all__ = ["handlers", "launch", "layout", "render", "sessions", "speech", "uploads"]
