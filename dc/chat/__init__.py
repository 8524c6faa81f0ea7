"""Talk to a model: the terminal chat (`python -m dc.chat`) and the web demo (`python -m dc.chat mode=web`).

`session` holds what both share (conversations, input checks, streamed answers), `backends` the models (a dc
checkpoint or an HF Llava directory), `cli` and `web` the two front-ends, `browser` a headless-Chromium driver for
the web demo (its tests and the docs screenshot). Nothing else in `dc` imports this package.
"""
