"""The apps built on the swarm library: what a person runs, not what a program imports.

`cli` (`swarm-client`: generate, chat, demo, serve, status), `chat` (the terminal chat loop),
`status` (the swarm's peers, coverage and route), `demo` (a local swarm of node processes),
`openai_server` and `openai_api` (the OpenAI-compatible HTTP API), `web_page` (its page at /:
the static files in `web/`) and `swarm_view` (what the page's swarm map draws). Apps read the environment
and the command line; the library below them (`swarm`) only takes values. Nothing in the library,
`node`, `export` or `android_bridge` imports an app.
"""
